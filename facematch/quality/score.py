"""One face's quality: the unified score's features, :class:`FaceQuality`, and :func:`assess`.

See :mod:`facematch.quality` for the overview.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ..errors import InvalidArgumentError, ModelError
from ..types import Face, PreparedImage
from .components import (
    ALIGNED_FACE_BOX,
    COMPONENT_NAMES,
    Pose,
    exposure,
    face_size,
    inter_ocular_distance,
    mirror_consistency,
    mirror_crops,
    pose_from_5,
    pose_from_106,
    sharpness,
    visible_fraction,
)

if TYPE_CHECKING:
    from ..cards import ModelCard, QualityBlock
    from ..matcher import FaceMatcher
    from ..zoo.landmarks import Landmarks106

# ---- the unified score: features of a fitted quality model -------------------------------

ComponentValues = Mapping[str, "float | None"]


def _of(component: str, fn: Any) -> Any:
    def feature(values: ComponentValues) -> float | None:
        v = values.get(component)
        return None if v is None else float(fn(v))

    feature.__doc__ = f"{fn.__name__ if hasattr(fn, '__name__') else fn}({component})"
    return feature


def _clipped(values: ComponentValues) -> float | None:
    dark, bright = values.get("dark_fraction"), values.get("bright_fraction")
    return None if dark is None or bright is None else float(dark + bright)


def _log1p(v: float) -> float:
    return math.log1p(max(float(v), 0.0))


def _deviation(v: float) -> float:
    return abs(float(v) - 127.5)


# Feature name -> (components it reads, function of the component values). A card's quality
# block names its features from this table; changing a feature's definition means refitting.
FEATURES: dict[str, tuple[tuple[str, ...], Any]] = {
    "log_feature_norm": (("feature_norm",), _of("feature_norm", _log1p)),
    "log_sharpness": (("sharpness",), _of("sharpness", _log1p)),
    "contrast": (("contrast",), _of("contrast", float)),
    "brightness_deviation": (("brightness",), _of("brightness", _deviation)),
    "clipped_fraction": (("dark_fraction", "bright_fraction"), _clipped),
    "mirror_consistency": (("mirror_consistency",), _of("mirror_consistency", float)),
    "detection_score": (("detection_score",), _of("detection_score", float)),
    "log_face_size": (("face_size_px",), _of("face_size_px", _log1p)),
    "log_inter_ocular": (("inter_ocular_px",), _of("inter_ocular_px", _log1p)),
    "visible_fraction": (("visible_fraction",), _of("visible_fraction", float)),
    "abs_yaw": (("yaw_deg",), _of("yaw_deg", abs)),
    "abs_pitch": (("pitch_deg",), _of("pitch_deg", abs)),
    "abs_roll": (("roll_deg",), _of("roll_deg", abs)),
}
FEATURE_NAMES = tuple(FEATURES)


def feature_vector(names: Sequence[str], values: ComponentValues) -> tuple[np.ndarray | None, tuple[str, ...]]:
    """The features ``names`` of one face's component ``values``, or ``None`` and the missing components."""
    out: list[float] = []
    missing: list[str] = []
    for name in names:
        needs, fn = FEATURES[name]
        v = fn(values)
        if v is None:
            missing.extend(c for c in needs if values.get(c) is None)
        else:
            out.append(v)
    if missing:
        return None, tuple(dict.fromkeys(missing))
    return np.asarray(out, np.float64), ()


def logistic_score(block: QualityBlock, x: np.ndarray) -> float:
    """100 × the logistic model's probability for standardised features ``x``: the unified score."""
    z = block.bias + float(np.dot(np.asarray(block.weights), (x - np.asarray(block.mean)) / np.asarray(block.std)))
    if z >= 0:
        p = 1.0 / (1.0 + math.exp(-z))
    else:
        e = math.exp(z)
        p = e / (1.0 + e)
    return 100.0 * p


UnifiedStatus = Literal["scored", "no_quality_model", "missing_components"]


def unified_score(
    block: QualityBlock | None, values: ComponentValues
) -> tuple[float | None, UnifiedStatus, tuple[str, ...]]:
    """(score 0-100 or None, status, components the model needs that were not measured)."""
    if block is None:
        return None, "no_quality_model", ()
    x, missing = feature_vector(block.features, values)
    if x is None:
        return None, "missing_components", missing
    return logistic_score(block, x), "scored", ()


# ---- one face's quality -----------------------------------------------------------------

_FRACTIONS = ("visible_fraction", "dark_fraction", "bright_fraction")


@dataclass(frozen=True)
class FaceQuality:
    """Quality of one face: every component (``None`` when not measured) and the unified score.

    Units and directions are in :data:`COMPONENTS`. Geometric components (sizes, visibility,
    detection score, 5-point pose) need a detected face: an aligned-crop input has none.
    ``mirror_consistency`` is only measured when asked for (one extra embedding), the 106-point
    pose likewise (``pose_method``). ``unified`` is the card's fitted score in [0, 100]; it is
    ``None`` with ``unified_status`` ``"no_quality_model"`` (the embedder card has no quality
    block) or ``"missing_components"`` (``missing`` names them). Every value is finite.
    """

    sharpness: float
    brightness: float
    contrast: float
    dark_fraction: float
    bright_fraction: float
    inter_ocular_px: float | None = None
    face_size_px: float | None = None
    visible_fraction: float | None = None
    detection_score: float | None = None
    yaw_deg: float | None = None
    pitch_deg: float | None = None
    roll_deg: float | None = None
    feature_norm: float | None = None
    mirror_consistency: float | None = None
    pose_method: Literal["5-point", "106-point"] | None = None
    unified: float | None = None
    unified_status: UnifiedStatus = "no_quality_model"
    missing: tuple[str, ...] = ()
    model_id: str | None = None  # the embedder whose norm and quality model these are

    def __post_init__(self) -> None:
        for name in COMPONENT_NAMES:
            v = getattr(self, name)
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)):
                raise ValueError(f"quality component {name} must be a number, got {type(v).__name__}")
            f = float(v)
            if not math.isfinite(f):
                raise ValueError(f"quality component {name} is not finite ({v}): no score is made of it")
            if name in _FRACTIONS and not -1e-9 <= f <= 1.0 + 1e-9:
                raise ValueError(f"quality component {name} must be a fraction in [0, 1], got {f}")
            object.__setattr__(self, name, f)
        if self.unified is not None:
            u = float(self.unified)
            if not math.isfinite(u) or not 0.0 <= u <= 100.0:
                raise ValueError(f"unified quality must be in [0, 100], got {self.unified}")
            object.__setattr__(self, "unified", u)
        if (self.unified is not None) != (self.unified_status == "scored"):
            raise ValueError(f"unified={self.unified} disagrees with unified_status={self.unified_status!r}")
        object.__setattr__(self, "missing", tuple(self.missing))

    @property
    def components(self) -> dict[str, float | None]:
        """Every component by name (``None``: not measured), in :data:`COMPONENTS` order."""
        return {name: getattr(self, name) for name in COMPONENT_NAMES}

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly view: the unified score, its status, and every component (units: :data:`COMPONENTS`)."""
        out: dict[str, Any] = {
            "unified": None if self.unified is None else round(self.unified, 2),
            "unified_status": self.unified_status,
            "missing": list(self.missing),
            "model_id": self.model_id,
            "pose_method": self.pose_method,
        }
        for name, v in self.components.items():
            out[name] = None if v is None else round(v, 5 if name in _FRACTIONS or name == "mirror_consistency" else 3)
        return out


def _finite_rows(values: Any, n: int, name: str, *, positive: bool = False) -> np.ndarray | None:
    if values is None:
        return None
    try:
        arr = np.asarray(values, np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentError(f"{name} must be numbers: {exc}") from exc
    if arr.shape != (n,):
        raise InvalidArgumentError(f"{name} must hold one value per face ({n}), got {arr.shape[0]}")
    if not np.all(np.isfinite(arr)) or (positive and np.any(arr <= 0)):
        raise InvalidArgumentError(f"{name} must be finite{' and positive' if positive else ''}")
    return arr


def assess(
    prepared: PreparedImage,
    norms: Any = None,
    card: ModelCard | None = None,
    *,
    mirror: Any = None,
    landmarks: Landmarks106 | None = None,
) -> tuple[FaceQuality, ...]:
    """The quality of every face of a prepared image (one :class:`FaceQuality` per crop, in order).

    ``norms`` are the crops' pre-normalisation feature norms (``embed_crops`` returns them);
    ``card`` is the embedder's card, whose quality block gives the unified score. ``mirror``
    holds precomputed mirror consistencies (see :func:`measure_mirror`); ``landmarks`` a
    106-point model to measure the pose with instead of the 5 landmarks. Raises
    ``InvalidArgumentError`` for norms or mirror values that are not finite, ``ModelError`` if
    a component comes out non-finite.
    """
    n = len(prepared)
    norm_rows = _finite_rows(norms, n, "norms", positive=True)
    mirror_rows = _finite_rows(mirror, n, "mirror consistencies")
    poses106 = pose_of_crops(landmarks, prepared) if landmarks is not None and n else None
    block = card.quality if card is not None else None
    out = []
    for i in range(n):
        crop = prepared.crops[i]
        ex = exposure(crop)
        values: dict[str, Any] = {
            "sharpness": sharpness(crop),
            "brightness": ex.brightness,
            "contrast": ex.contrast,
            "dark_fraction": ex.dark_fraction,
            "bright_fraction": ex.bright_fraction,
            "feature_norm": None if norm_rows is None else float(norm_rows[i]),
            "mirror_consistency": None if mirror_rows is None else float(mirror_rows[i]),
        }
        face = prepared.face(i)
        pose = None
        if face is not None:
            values.update(_geometry(face, prepared.image_size))
            pose = pose_from_5(face.landmarks)
        if poses106 is not None:
            pose = poses106[i]
        if pose is not None:
            values.update(yaw_deg=pose.yaw, pitch_deg=pose.pitch, roll_deg=pose.roll)
        score, status, missing = unified_score(block, values)
        try:
            out.append(
                FaceQuality(
                    **values,
                    pose_method=None if pose is None else pose.method,
                    unified=score,
                    unified_status=status,
                    missing=missing,
                    model_id=None if card is None else card.id,
                )
            )
        except ValueError as exc:
            raise ModelError(f"face {i}: {exc}") from exc
    return tuple(out)


def _geometry(face: Face, image_size: tuple[int, int]) -> dict[str, float | None]:
    return {
        "inter_ocular_px": inter_ocular_distance(face.landmarks),
        "face_size_px": face_size(face.box),
        "visible_fraction": visible_fraction(face.landmarks, image_size),
        "detection_score": face.score,
    }


def pose_of_crops(landmarks: Landmarks106, prepared: PreparedImage) -> list[Pose | None]:
    """The 106-point pose of each face, measured on its aligned crop (no second crop of the image).

    Yaw and pitch survive the alignment (a similarity transform); the alignment's rotation is
    added back to the roll of a detected face so it refers to the original image.
    """
    from ..align import alignment_matrix

    crops = prepared.crops
    h, w = crops.shape[1:3]
    x0, y0, x1, y1 = ALIGNED_FACE_BOX
    box = np.array([x0 * w, y0 * h, x1 * w, y1 * h], np.float32)
    points = landmarks.predict_crops(crops, box)
    out: list[Pose | None] = []
    for i, pts in enumerate(points):
        pose = pose_from_106(pts)
        face = prepared.face(i)
        if pose is not None and face is not None:
            try:
                m = alignment_matrix(face.landmarks)
            except ValueError:  # degenerate landmarks: the crop frame is all there is
                m = None
            if m is not None:
                turn = math.degrees(math.atan2(float(m[1, 0]), float(m[0, 0])))
                roll = (pose.roll - turn + 180.0) % 360.0 - 180.0
                pose = replace(pose, roll=roll)
        out.append(pose)
    return out


def measure_mirror(matcher: FaceMatcher, crops: np.ndarray, embeddings: np.ndarray) -> np.ndarray:
    """Mirror consistency of each crop: **one extra embedding per crop** (of its mirror image)."""
    mirrored, _ = matcher.embed_crops(mirror_crops(crops))
    return mirror_consistency(embeddings, mirrored)


_landmark_models: dict[int, Landmarks106] = {}
_landmark_lock = threading.Lock()


def landmark_model(threads: int | None = None) -> Landmarks106:
    """The pack's 106-point landmark model (``2d106det``), loaded once per process on first use."""
    from ..cards import DEFAULT_LANDMARKS
    from ..zoo.landmarks import Landmarks106

    key = threads or 0
    with _landmark_lock:
        model = _landmark_models.get(key)
        if model is None:
            model = Landmarks106.load(DEFAULT_LANDMARKS, threads=threads)
            _landmark_models[key] = model
        return model


def assess_each(matcher: FaceMatcher, prepared: Sequence[Any], norms: Any) -> list[FaceQuality]:
    """The quality of the first face (``crops[0]``) of each :class:`PreparedImage` of ``prepared``, in order.

    Other items (an image's error, ``None``) are skipped; ``norms`` holds one norm per
    :class:`PreparedImage` (what ``embed_crops`` returned for their first crops).
    """
    items = [p for p in prepared if isinstance(p, PreparedImage)]
    values = np.asarray(norms, np.float64).reshape(-1)
    if values.size != len(items):
        raise InvalidArgumentError(f"norms must hold one value per prepared image ({len(items)}), got {values.size}")
    return [matcher.assess(_first_face(p), values[i : i + 1])[0] for i, p in enumerate(items)]


def _first_face(prep: PreparedImage) -> PreparedImage:
    if len(prep) == 1:
        return prep
    faces = prep.faces if prep.aligned else prep.faces[:1]
    return PreparedImage(faces, prep.crops[:1], prep.faces_total, prep.image_size, prep.aligned)


def assess_image(
    matcher: FaceMatcher,
    image: Any,
    *,
    faces: Any = "all",
    max_faces: int | None = None,
    aligned: bool = False,
    mirror: bool = False,
    pose106: bool = False,
) -> tuple[PreparedImage, tuple[FaceQuality, ...]]:
    """``matcher.prepare`` an image, embed its crops and measure each face's quality.

    ``mirror=True`` adds mirror consistency (one extra embedding per face); ``pose106=True``
    measures the pose with the 106-point model (loaded on first use).
    """
    prep = matcher.prepare(image, faces, max_faces=max_faces, aligned=aligned)
    emb, norms = matcher.embed_crops(prep.crops)
    mirrored = measure_mirror(matcher, prep.crops, emb) if mirror else None
    marks = landmark_model() if pose106 else None
    return prep, assess(prep, norms, matcher.embedder_card, mirror=mirrored, landmarks=marks)
