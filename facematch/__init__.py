"""facematch: face matching on hyperspherical embeddings.

    >>> import facematch
    >>> facematch.verify("a.jpg", "b.jpg")            # doctest: +SKIP
    VerifyResult(is_match=True, similarity=0.71, ...)

Nothing heavy is imported here (not even numpy): the result types, the matcher and the
gallery are imported on first use, and models load when a matcher is created.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import (
    BackendUnavailableError,
    CalibrationMissingError,
    ChecksumMismatchError,
    DuplicateIdentityError,
    ExplanationUnavailableError,
    FacematchError,
    GalleryError,
    GalleryLockedError,
    IdentityNotFoundError,
    ImageTooLargeError,
    ImageTooSmallError,
    InvalidArgumentError,
    InvalidImageError,
    ModelError,
    ModelMismatchError,
    ModelNotFoundError,
    MultipleFacesError,
    NoFaceError,
    NotAlignedError,
    NoTemplatesError,
    RateOutOfRangeError,
    TemplateNotFoundError,
    UnsupportedMediaError,
)

if TYPE_CHECKING:
    from .explain import Explanation
    from .gallery import Gallery
    from .matcher import FaceMatcher
    from .types import Candidate, Detections, Face, FaceEmbedding, IdentifyResult, PreparedImage, VerifyResult

__version__ = "0.1.0"

_LAZY = {
    "Candidate": ("facematch.types", "Candidate"),
    "Detections": ("facematch.types", "Detections"),
    "Face": ("facematch.types", "Face"),
    "FaceEmbedding": ("facematch.types", "FaceEmbedding"),
    "IdentifyResult": ("facematch.types", "IdentifyResult"),
    "PreparedImage": ("facematch.types", "PreparedImage"),
    "VerifyResult": ("facematch.types", "VerifyResult"),
    "FaceMatcher": ("facematch.matcher", "FaceMatcher"),
    "Explanation": ("facematch.explain", "Explanation"),
    "default_matcher": ("facematch.matcher", "default_matcher"),
    "cosine_similarity": ("facematch.similarity", "cosine_similarity"),
    "Gallery": ("facematch.gallery", "Gallery"),
    "load_image": ("facematch.io", "load_image"),
    "load_card": ("facematch.model_files", "load_card"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'facematch' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


def verify(image1: Any, image2: Any, **kwargs: Any) -> VerifyResult:
    """Are the faces in two images the same person? Uses the default model pack.

    Images may be paths, bytes, BGR numpy arrays or PIL images. Keyword arguments go
    to :meth:`FaceMatcher.verify` (``threshold=``, ``fmr=``, ``aligned=``).
    """
    from .matcher import default_matcher

    return default_matcher().verify(image1, image2, **kwargs)


def detect(image: Any) -> Detections:
    """All faces in an image, with the default detector."""
    from .matcher import default_matcher

    return default_matcher().detect(image)


def embed(image: Any, **kwargs: Any) -> list[FaceEmbedding]:
    """Embeddings of the faces in an image, with the default pack. See :meth:`FaceMatcher.embed`."""
    from .matcher import default_matcher

    return default_matcher().embed(image, **kwargs)


__all__ = [
    "BackendUnavailableError",
    "CalibrationMissingError",
    "Candidate",
    "ChecksumMismatchError",
    "Detections",
    "DuplicateIdentityError",
    "Explanation",
    "ExplanationUnavailableError",
    "Face",
    "FaceEmbedding",
    "FaceMatcher",
    "FacematchError",
    "Gallery",
    "GalleryError",
    "GalleryLockedError",
    "IdentifyResult",
    "IdentityNotFoundError",
    "ImageTooLargeError",
    "ImageTooSmallError",
    "InvalidArgumentError",
    "InvalidImageError",
    "ModelError",
    "ModelMismatchError",
    "ModelNotFoundError",
    "MultipleFacesError",
    "NoFaceError",
    "NoTemplatesError",
    "NotAlignedError",
    "PreparedImage",
    "RateOutOfRangeError",
    "TemplateNotFoundError",
    "UnsupportedMediaError",
    "VerifyResult",
    "detect",
    "embed",
    "verify",
]
