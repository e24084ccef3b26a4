"""Typed, validated result types.

Every result keeps its shape when empty: ``Detections.empty()`` has ``boxes`` of
shape ``(0, 4)``, ``IdentifyResult`` with no candidates is still an
``IdentifyResult``. Embeddings are never part of ``to_dict()`` output: face
embeddings are biometric data and only leave the process when asked for.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

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

    def __getitem__(self, i: int) -> Face:
        return Face(box=self.boxes[i], score=float(self.scores[i]), landmarks=self.landmarks[i])

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
        order = np.argsort(-self.areas, kind="stable")
        return Detections(self.boxes[order], self.scores[order], self.landmarks[order])

    def to_list(self) -> list[dict[str, Any]]:
        return [f.to_dict() for f in self]


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

    def to_dict(self) -> dict[str, Any]:
        return {
            "is_match": bool(self.is_match),
            "similarity": round(float(self.similarity), 6),
            "threshold": round(float(self.threshold), 6),
            "target_fmr": self.target_fmr,
            "model_id": self.model_id,
            "face1": self.face1.to_dict() if self.face1 is not None else None,
            "face2": self.face2.to_dict() if self.face2 is not None else None,
        }


@dataclass(frozen=True)
class Candidate:
    """One gallery identity proposed for a probe, with its aggregated similarity."""

    identity_id: str
    similarity: float
    estimated_fmr: float | None  # per-comparison false-match rate at this similarity (None: no calibration)
    template_id: int | None = None  # best-scoring template of this identity
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "identity_id": self.identity_id,
            "similarity": round(float(self.similarity), 6),
            "estimated_fmr": None if self.estimated_fmr is None else float(self.estimated_fmr),
            "template_id": self.template_id,
            "metadata": dict(self.metadata),
        }


@dataclass(frozen=True)
class IdentifyResult:
    """Open-set 1:N answer for one probe: ranked candidates, or an explicit unknown.

    ``candidates`` are all the top-k identities ranked by similarity, whether or
    not they pass the threshold; ``is_unknown`` is true when the best one is below
    ``threshold`` (or the gallery is empty).
    """

    candidates: tuple[Candidate, ...]
    threshold: float
    is_unknown: bool
    face: Face | None = None
    target_fpir: float | None = None
    gallery_size: int = 0
    threshold_extrapolated: bool = False  # the FPIR threshold lies beyond the calibration's measured range

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
            "face": self.face.to_dict() if self.face is not None else None,
            "candidates": [c.to_dict() for c in self.candidates],
        }


__all__ = [
    "Candidate",
    "Detections",
    "Face",
    "FaceEmbedding",
    "FloatArray",
    "IdentifyResult",
    "VerifyResult",
]
