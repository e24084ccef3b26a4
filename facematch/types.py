"""Typed, validated result types.

Every result keeps its shape when empty: ``Detections.empty()`` has ``boxes`` of
shape ``(0, 4)``, ``IdentifyResult`` with no candidates is still an
``IdentifyResult``. Embeddings are never part of ``to_dict()`` output: face
embeddings are biometric data and only leave the process when asked for.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, overload

import numpy as np
import numpy.typing as npt

from .errors import FacematchError

if TYPE_CHECKING:
    from .quality import FaceQuality

FloatArray = npt.NDArray[np.float32]


def _as_f32(a: Any, shape_tail: tuple[int, ...], name: str) -> FloatArray:
    arr = np.asarray(a, dtype=np.float32)
    if arr.ndim != len(shape_tail) + 1 or tuple(arr.shape[1:]) != shape_tail:
        raise ValueError(f"{name} must have shape (N, {', '.join(map(str, shape_tail))}), got {arr.shape}")
    return arr


@dataclass(frozen=True)
class Face:
    """One detected face, in original image pixel coordinates.

    ``box`` is ``(x1, y1, x2, y2)``; ``landmarks`` are the 5 ArcFace points
    (left eye, right eye, nose, left mouth corner, right mouth corner) as ``(5, 2)``.
    """

    box: FloatArray
    score: float
    landmarks: FloatArray

    def __post_init__(self) -> None:
        box = np.asarray(self.box, dtype=np.float32).reshape(-1)
        lms = np.asarray(self.landmarks, dtype=np.float32)
        if box.shape != (4,):
            raise ValueError(f"box must have 4 values, got shape {box.shape}")
        if lms.shape != (5, 2):
            raise ValueError(f"landmarks must have shape (5, 2), got {lms.shape}")
        if not np.all(np.isfinite(box)) or not np.all(np.isfinite(lms)):
            raise ValueError("box and landmarks must be finite")
        object.__setattr__(self, "box", box)
        object.__setattr__(self, "landmarks", lms)
        object.__setattr__(self, "score", float(self.score))

    @property
    def width(self) -> float:
        return float(self.box[2] - self.box[0])

    @property
    def height(self) -> float:
        return float(self.box[3] - self.box[1])

    @property
    def area(self) -> float:
        return max(0.0, self.width) * max(0.0, self.height)

    def scaled(self, scale: tuple[float, float]) -> Face:
        """This face with coordinates multiplied by per-axis factors ``(sx, sy)`` (e.g. decoded → original)."""
        if tuple(scale) == (1.0, 1.0):
            return self
        s = np.asarray(scale, np.float32)
        return Face(box=self.box * np.tile(s, 2), score=self.score, landmarks=self.landmarks * s)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly view: box, detection score and landmarks (no biometric template)."""
        return {
            "box": [round(float(v), 2) for v in self.box],
            "score": round(self.score, 5),
            "landmarks": [[round(float(x), 2), round(float(y), 2)] for x, y in self.landmarks],
        }


@dataclass(frozen=True)
class Detections:
    """All faces found in one image, as parallel arrays (shape kept when empty)."""

    boxes: FloatArray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    scores: FloatArray = field(default_factory=lambda: np.zeros((0,), np.float32))
    landmarks: FloatArray = field(default_factory=lambda: np.zeros((0, 5, 2), np.float32))

    def __post_init__(self) -> None:
        boxes = _as_f32(self.boxes, (4,), "boxes")
        scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        lms = _as_f32(self.landmarks, (5, 2), "landmarks")
        if not (len(boxes) == len(scores) == len(lms)):
            raise ValueError(f"boxes, scores and landmarks disagree in length: {len(boxes)}, {len(scores)}, {len(lms)}")
        object.__setattr__(self, "boxes", boxes)
        object.__setattr__(self, "scores", scores)
        object.__setattr__(self, "landmarks", lms)

    @classmethod
    def empty(cls) -> Detections:
        return cls()

    @classmethod
    def from_faces(cls, faces: list[Face]) -> Detections:
        if not faces:
            return cls.empty()
        return cls(
            boxes=np.stack([f.box for f in faces]),
            scores=np.array([f.score for f in faces], np.float32),
            landmarks=np.stack([f.landmarks for f in faces]),
        )

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    @overload
    def __getitem__(self, index: int | np.integer[Any]) -> Face: ...

    @overload
    def __getitem__(self, index: slice | Sequence[int] | np.ndarray) -> Detections: ...

    def __getitem__(self, index: Any) -> Face | Detections:
        """``dets[i]`` is one :class:`Face`; a slice, index list or boolean mask gives a :class:`Detections`.

        ``dets[dets.scores > 0.8]``, ``dets[:3]`` and ``dets[[2, 0]]`` keep the parallel arrays
        together, the way ``supervision.Detections`` does.
        """
        if isinstance(index, (int, np.integer)) and not isinstance(index, bool):
            i = int(index)
            return Face(box=self.boxes[i], score=float(self.scores[i]), landmarks=self.landmarks[i])
        if isinstance(index, slice):
            sel: Any = index
        else:
            sel = np.asarray(index)
            if sel.dtype == bool:
                if sel.shape != (len(self),):
                    raise IndexError(f"a boolean mask for {len(self)} detections must have shape ({len(self)},)")
            elif sel.size == 0:
                sel = sel.astype(np.int64)
            elif not np.issubdtype(sel.dtype, np.integer):
                raise IndexError(f"detections are indexed by int, slice, int array or boolean mask, not {sel.dtype}")
        return Detections(boxes=self.boxes[sel], scores=self.scores[sel], landmarks=self.landmarks[sel])

    def __iter__(self) -> Iterator[Face]:
        for i in range(len(self)):
            yield self[i]

    @property
    def areas(self) -> FloatArray:
        wh = np.clip(self.boxes[:, 2:4] - self.boxes[:, 0:2], 0, None)
        return (wh[:, 0] * wh[:, 1]).astype(np.float32)

    def largest(self) -> Face | None:
        """The face with the largest box area, or ``None`` when empty."""
        if len(self) == 0:
            return None
        return self[int(np.argmax(self.areas))]

    def sorted_by_area(self) -> Detections:
        """The same faces, largest box first (stable for equal areas)."""
        return self[np.argsort(-self.areas, kind="stable")]

    def scaled(self, scale: tuple[float, float]) -> Detections:
        """All faces with coordinates multiplied by per-axis factors ``(sx, sy)``."""
        if tuple(scale) == (1.0, 1.0) or len(self) == 0:
            return self
        s = np.asarray(scale, np.float32)
        return Detections(boxes=self.boxes * np.tile(s, 2), scores=self.scores, landmarks=self.landmarks * s)

    def to_list(self) -> list[dict[str, Any]]:
        return [f.to_dict() for f in self]


@dataclass(frozen=True)
class PreparedImage:
    """One image after the shared preparation step: decode → detect → select → align.

    ``faces`` are the selected faces in original image coordinates (largest first when
    several were asked for); ``crops`` holds their aligned crops, one per face, in the
    embedder's input size (BGR uint8). For an input taken as an already aligned crop
    there is no detection: ``faces`` is empty, ``crops`` holds the one crop and
    ``aligned`` is true. ``faces_total`` counts what the detector found, so
    ``truncated`` tells when more faces were found than were kept.
    """

    faces: Detections
    crops: np.ndarray = field(repr=False)
    faces_total: int
    image_size: tuple[int, int]  # (width, height) of the original, orientation-corrected image
    aligned: bool = False

    def __post_init__(self) -> None:
        crops = np.asarray(self.crops)
        if crops.ndim != 4 or crops.shape[-1] != 3 or crops.dtype != np.uint8:
            raise ValueError(f"crops must be (N, H, W, 3) uint8, got {crops.shape} {crops.dtype}")
        if not self.aligned and len(self.faces) != len(crops):
            raise ValueError(f"{len(self.faces)} faces but {len(crops)} crops")
        if self.faces_total < len(crops):
            raise ValueError(f"faces_total ({self.faces_total}) is below the number of crops ({len(crops)})")
        object.__setattr__(self, "crops", crops)

    def __len__(self) -> int:
        return int(self.crops.shape[0])

    @property
    def truncated(self) -> bool:
        """True when the detector found more faces than were kept."""
        return self.faces_total > len(self)

    def face(self, i: int) -> Face | None:
        """The ``i``-th selected face (``None`` for an aligned-crop input)."""
        return None if self.aligned else self.faces[i]


@dataclass(frozen=True)
class FaceEmbedding:
    """A face and its unit-norm embedding, tagged with the model that made it.

    ``vector`` is biometric data; it is excluded from ``repr`` and never serialised
    by ``to_dict``.
    """

    face: Face | None
    vector: FloatArray = field(repr=False)
    model_id: str
    norm: float | None = None  # pre-normalisation feature norm, a quality signal
    quality: FaceQuality | None = None  # the face's quality components and unified score

    def __post_init__(self) -> None:
        vec = np.asarray(self.vector, dtype=np.float32).reshape(-1)
        if vec.size == 0 or not np.all(np.isfinite(vec)):
            raise ValueError("embedding vector must be non-empty and finite")
        object.__setattr__(self, "vector", vec)

    @property
    def dim(self) -> int:
        return int(self.vector.shape[0])

    def to_dict(self, include_vector: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "face": self.face.to_dict() if self.face is not None else None,
            "model_id": self.model_id,
            "dim": self.dim,
        }
        if self.norm is not None:
            out["norm"] = round(float(self.norm), 4)
        if self.quality is not None:
            out["quality"] = self.quality.to_dict()
        if include_vector:
            out["vector"] = [float(v) for v in self.vector]
        return out


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of a 1:1 comparison of two faces."""

    is_match: bool
    similarity: float
    threshold: float
    face1: Face | None
    face2: Face | None
    model_id: str = ""
    target_fmr: float | None = None  # the false-match rate the threshold was chosen for, if any
    threshold_extrapolated: bool = False  # the FMR threshold lies beyond the calibration's measured range
    quality1: FaceQuality | None = None  # quality of face1 (None: not measured, e.g. bare vectors)
    quality2: FaceQuality | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "is_match": bool(self.is_match),
            "similarity": round(float(self.similarity), 6),
            "threshold": round(float(self.threshold), 6),
            "target_fmr": self.target_fmr,
            "threshold_extrapolated": self.threshold_extrapolated,
            "model_id": self.model_id,
            "face1": self.face1.to_dict() if self.face1 is not None else None,
            "face2": self.face2.to_dict() if self.face2 is not None else None,
            "quality1": self.quality1.to_dict() if self.quality1 is not None else None,
            "quality2": self.quality2.to_dict() if self.quality2 is not None else None,
        }


@dataclass(frozen=True)
class Candidate:
    """One gallery identity proposed for a probe, with its aggregated similarity.

    ``estimated_fmr`` is the calibration's per-comparison false-match rate at this
    similarity (``None`` without a calibration). Above the highest impostor score the
    calibration measured, the rate is finer than it resolves (``1 / impostor pairs``):
    then ``estimated_fmr_below_resolution`` is true and ``estimated_fmr`` holds that
    resolution as an upper bound (the rate is *below* it), never an extrapolated number.
    """

    identity_id: str
    similarity: float
    estimated_fmr: float | None
    template_id: int | None = None  # best-scoring template of this identity
    metadata: dict[str, Any] = field(default_factory=dict)
    estimated_fmr_below_resolution: bool = False

    def fmr_text(self, digits: int = 2) -> str:
        """``estimated_fmr`` for people: ``3.1e-4``, or ``< 2.4e-6`` (the bound rounded up) below resolution."""
        if self.estimated_fmr is None:
            return "n/a"
        if self.estimated_fmr_below_resolution:
            return "< " + _exp(ceil_sig(self.estimated_fmr, digits), digits)
        return _exp(self.estimated_fmr, digits)

    def to_dict(self) -> dict[str, Any]:
        return {
            "identity_id": self.identity_id,
            "similarity": round(float(self.similarity), 6),
            "estimated_fmr": None if self.estimated_fmr is None else float(self.estimated_fmr),
            "estimated_fmr_below_resolution": self.estimated_fmr_below_resolution,
            "template_id": self.template_id,
            "metadata": dict(self.metadata),
        }


def _exp(x: float, digits: int) -> str:
    """``x`` in short scientific notation: ``2.4e-6``."""
    mantissa, _, exponent = f"{x:.{digits - 1}e}".partition("e")
    return f"{mantissa}e{int(exponent)}"


def ceil_sig(x: float, digits: int = 2) -> float:
    """``x`` rounded up to ``digits`` significant digits (a bound stays a bound): 2.35e-6 -> 2.4e-6."""
    if x <= 0 or not math.isfinite(x):
        return x
    scale = 10.0 ** (math.floor(math.log10(x)) - digits + 1)
    up = math.ceil(round(x / scale, 9)) * scale
    return float(f"{up:.{digits - 1}e}")


@dataclass(frozen=True)
class IdentifyResult:
    """Open-set 1:N answer for one probe: ranked candidates, or an explicit unknown.

    ``candidates`` are all the top-k identities ranked by similarity, whether or
    not they pass the threshold; ``is_unknown`` is true when the best one is below
    ``threshold`` (or the gallery is empty). A threshold from ``target_fpir`` is the
    calibration's threshold at the per-comparison FMR ``1 - (1 - FPIR)^(1/N)`` with
    ``N = comparisons``, the gallery's template count (``gallery_size`` counts identities).
    """

    candidates: tuple[Candidate, ...]
    threshold: float
    is_unknown: bool
    face: Face | None = None
    target_fpir: float | None = None
    gallery_size: int = 0  # identities in the gallery
    threshold_extrapolated: bool = False  # the FPIR threshold lies beyond the calibration's measured range
    comparisons: int = 0  # templates a probe is compared with: the N of the FPIR -> per-comparison FMR scaling
    fmr_resolution: float | None = None  # the finest FMR the calibration resolves (1 / impostor pairs)
    quality: FaceQuality | None = None  # the probe face's quality (None: not measured)

    @property
    def best(self) -> Candidate | None:
        """The accepted identity, or ``None`` when the answer is unknown."""
        if self.is_unknown or not self.candidates:
            return None
        return self.candidates[0]

    @property
    def identity_id(self) -> str | None:
        best = self.best
        return best.identity_id if best is not None else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "identity_id": self.identity_id,
            "is_unknown": self.is_unknown,
            "threshold": round(float(self.threshold), 6),
            "target_fpir": self.target_fpir,
            "threshold_extrapolated": self.threshold_extrapolated,
            "gallery_size": self.gallery_size,
            "comparisons": self.comparisons,
            "fmr_resolution": self.fmr_resolution,
            "face": self.face.to_dict() if self.face is not None else None,
            "quality": self.quality.to_dict() if self.quality is not None else None,
            "candidates": [c.to_dict() for c in self.candidates],
        }


@dataclass(frozen=True)
class TemplateScore:
    """The cosine similarity of a probe to one stored template of an identity."""

    template_id: int
    similarity: float

    def to_dict(self) -> dict[str, Any]:
        return {"template_id": int(self.template_id), "similarity": round(float(self.similarity), 6)}


@dataclass(frozen=True)
class IdentityVerifyResult:
    """1:1 against an enrolled identity: is the probe face this identity?

    ``similarity`` aggregates the per-template scores by the gallery's rule
    (``aggregation``: ``max``, ``mean`` or ``topk_mean``); ``is_match`` is
    ``similarity >= threshold``, a 1:1 threshold (the caller's, or the calibration's at
    ``target_fmr``), not scaled by the gallery's size: one subject is compared, nothing
    is searched. ``templates`` holds every template's score, best first.
    """

    identity_id: str
    is_match: bool
    similarity: float
    threshold: float
    templates: tuple[TemplateScore, ...]
    aggregation: str = "max"
    face: Face | None = None
    model_id: str = ""
    target_fmr: float | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    quality: FaceQuality | None = None  # the probe face's quality (None: not measured)

    @property
    def best_template_id(self) -> int | None:
        return self.templates[0].template_id if self.templates else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "identity_id": self.identity_id,
            "is_match": bool(self.is_match),
            "similarity": round(float(self.similarity), 6),
            "threshold": round(float(self.threshold), 6),
            "target_fmr": self.target_fmr,
            "aggregation": self.aggregation,
            "model_id": self.model_id,
            "face": self.face.to_dict() if self.face is not None else None,
            "quality": self.quality.to_dict() if self.quality is not None else None,
            "templates": [t.to_dict() for t in self.templates],
            "metadata": dict(self.metadata),
        }


@dataclass(frozen=True)
class PairResult:
    """One pair of a batch verification: its :class:`VerifyResult`, or the error that kept it from one.

    ``image1`` / ``image2`` index the batch's distinct images. ``error`` is the
    :class:`~facematch.errors.FacematchError` of the first of the two images that could not
    be prepared (``NoFaceError``, ``InvalidImageError``, ...) or whose face failed the batch's
    quality policy (``LowQualityError``, ``details["reasons"]``), relabelled ``image1`` or
    ``image2``; the other pairs are unaffected.
    """

    index: int
    image1: int
    image2: int
    result: VerifyResult | None = None
    error: FacematchError | None = None

    def __post_init__(self) -> None:
        if (self.result is None) == (self.error is None):
            raise ValueError("a pair has either a result or an error")

    @property
    def ok(self) -> bool:
        return self.result is not None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"index": self.index, "image1": self.image1, "image2": self.image2}
        if self.result is not None:
            out.update(self.result.to_dict())
            out["error"] = None
        else:
            assert self.error is not None
            out["error"] = {"code": self.error.code, "detail": self.error.message}
            reasons = self.error.details.get("reasons")
            if isinstance(reasons, list):  # low_quality: each failing component
                out["error"]["reasons"] = [dict(r) for r in reasons]
        return out


@dataclass(frozen=True)
class VerifyBatchResult:
    """Outcome of a batch of 1:1 comparisons: one :class:`PairResult` per pair, in order.

    ``threshold`` / ``target_fmr`` are the batch's decision rule (the same for every pair);
    ``images`` counts the distinct images prepared (each once, however many pairs use it).
    """

    pairs: tuple[PairResult, ...]
    threshold: float
    target_fmr: float | None
    model_id: str
    images: int = 0

    def __len__(self) -> int:
        return len(self.pairs)

    def __iter__(self) -> Iterator[PairResult]:
        return iter(self.pairs)

    def __getitem__(self, i: int) -> PairResult:
        return self.pairs[i]

    @property
    def results(self) -> tuple[VerifyResult | None, ...]:
        """Each pair's result (``None`` where the pair failed)."""
        return tuple(p.result for p in self.pairs)

    @property
    def failed(self) -> tuple[PairResult, ...]:
        return tuple(p for p in self.pairs if not p.ok)

    def to_dict(self) -> dict[str, Any]:
        return {
            "threshold": round(float(self.threshold), 6),
            "target_fmr": self.target_fmr,
            "model_id": self.model_id,
            "images": self.images,
            "failed": len(self.failed),
            "pairs": [p.to_dict() for p in self.pairs],
        }


__all__ = [
    "Candidate",
    "Detections",
    "Face",
    "FaceEmbedding",
    "FloatArray",
    "IdentifyResult",
    "IdentityVerifyResult",
    "PairResult",
    "PreparedImage",
    "TemplateScore",
    "VerifyBatchResult",
    "VerifyResult",
    "ceil_sig",
]
