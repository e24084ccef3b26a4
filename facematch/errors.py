"""The facematch error tree.

Every public call that can fail on user input raises a :class:`FacematchError`
subclass. Each subclass carries a stable ``code`` and the HTTP status the server
maps it to, so the server never has to guess.
"""

from __future__ import annotations


class FacematchError(Exception):
    """Base class of every error facematch raises on bad input or state."""

    code: str = "facematch_error"
    http_status: int = 400

    def __init__(self, message: str, **details: object) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def about(self, label: str, **details: object) -> FacematchError:
        """The same error, of the same type, naming what it is about (an image, a file).

        ``NoFaceError("no face found")`` becomes ``NoFaceError("image2: no face found")`` with
        ``details["image"] = "image2"`` (plus ``details``). Used wherever several inputs are
        processed together, so the caller learns which one failed.
        """
        merged = {**self.details, "image": label, **details}
        try:
            out = type(self)(f"{label}: {self.message}", **merged)
        except TypeError:  # a subclass with another constructor
            out = FacematchError(f"{label}: {self.message}", **merged)
            out.code, out.http_status = self.code, self.http_status
        out.__cause__ = self
        return out


class InvalidImageError(FacematchError):
    """The input is not a decodable image (empty, text, truncated, unsupported)."""

    code = "invalid_image"
    http_status = 422


class UnsupportedMediaError(InvalidImageError):
    """The bytes are an image format facematch does not accept (e.g. animated GIF)."""

    code = "unsupported_media"
    http_status = 415


class ImageTooLargeError(InvalidImageError):
    """The image declares more pixels than the configured budget (decompression bomb guard)."""

    code = "image_too_large"
    http_status = 413


class ImageTooSmallError(InvalidImageError):
    """The image is too small to hold a face."""

    code = "image_too_small"
    http_status = 422


class NotAlignedError(InvalidImageError):
    """An image passed as an aligned face crop does not have the embedder's crop shape."""

    code = "not_aligned"
    http_status = 422


class NoFaceError(FacematchError):
    """No face was found where one was required."""

    code = "no_face"
    http_status = 422


class MultipleFacesError(FacematchError):
    """Several faces were found where the policy requires exactly one."""

    code = "multiple_faces"
    http_status = 422


class ModelError(FacematchError):
    """A model file or card is missing, corrupt, or inconsistent."""

    code = "model_error"
    http_status = 500


class ModelNotFoundError(ModelError):
    """A model file or its card cannot be found locally (facematch never downloads)."""

    code = "model_not_found"


class ChecksumMismatchError(ModelError):
    """A model file's sha256 does not match its card."""

    code = "checksum_mismatch"


class CalibrationMissingError(ModelError):
    """A threshold was requested from a card that has no calibration for it."""

    code = "calibration_missing"
    http_status = 422


class RateOutOfRangeError(CalibrationMissingError):
    """No threshold can be established for a target rate (FMR or FPIR) on a calibrated model.

    The rate is finer than the calibration resolves and the impostor tail cannot be
    extrapolated to it, or the extrapolated threshold would be above 1 (outside the cosine
    range). The same rule for ``verify`` (FMR) and ``identify`` (FPIR).
    """

    code = "rate_out_of_range"
    http_status = 422


class InvalidArgumentError(FacematchError, ValueError):
    """An argument is out of range or the combination of arguments is invalid."""

    code = "invalid_argument"
    http_status = 422


class GalleryError(FacematchError):
    """Base class of gallery errors."""

    code = "gallery_error"
    http_status = 409


class IdentityNotFoundError(GalleryError):
    """The identity (or template) id does not exist in the gallery."""

    code = "identity_not_found"
    http_status = 404


class TemplateNotFoundError(IdentityNotFoundError):
    """The face template id does not exist in the gallery."""

    code = "template_not_found"


class NoTemplatesError(GalleryError):
    """The identity exists but holds no template to compare with (all were removed)."""

    code = "no_templates"
    http_status = 409


class DuplicateIdentityError(GalleryError):
    """The identity already exists."""

    code = "duplicate_identity"
    http_status = 409


class ModelMismatchError(GalleryError):
    """Embeddings or a model do not match the model the gallery was built with."""

    code = "model_mismatch"
    http_status = 409


class GalleryLockedError(GalleryError):
    """Another process holds the gallery open for writing."""

    code = "gallery_locked"
    http_status = 423


class GalleryCorruptError(GalleryError):
    """The gallery files are inconsistent beyond automatic repair."""

    code = "gallery_corrupt"
    http_status = 500


class ExplanationUnavailableError(FacematchError):
    """The requested explanation method cannot run on this model (no ``explain`` block, a non-affine head)."""

    code = "explanation_unavailable"
    http_status = 422


class StoreUnavailableError(GalleryError):
    """The gallery's database (PostgreSQL) cannot be reached right now; the same call can be retried."""

    code = "store_unavailable"
    http_status = 503


class BackendUnavailableError(FacematchError):
    """An optional backend (FAISS-GPU, Milvus, TensorRT, torch) is not installed or usable."""

    code = "backend_unavailable"
    http_status = 501


class ProviderUnavailableError(BackendUnavailableError):
    """An execution provider that was asked for explicitly is not the one running the model.

    ONNX Runtime falls back to CPU when a provider's libraries cannot load (a CUDA major
    the wheel was not built for, no cuDNN, no TensorRT); facematch compares what runs with
    what was requested and raises this instead of serving on the wrong device.
    """

    code = "provider_unavailable"


__all__ = [
    "BackendUnavailableError",
    "CalibrationMissingError",
    "ChecksumMismatchError",
    "DuplicateIdentityError",
    "ExplanationUnavailableError",
    "FacematchError",
    "GalleryCorruptError",
    "GalleryError",
    "GalleryLockedError",
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
    "ProviderUnavailableError",
    "RateOutOfRangeError",
    "StoreUnavailableError",
    "TemplateNotFoundError",
    "UnsupportedMediaError",
]
