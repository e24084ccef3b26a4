"""Quality components as pure functions: the catalogue with units, face geometry, head pose, the crop.

See :mod:`facematch.quality` for the overview.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from ..errors import InvalidArgumentError

# ---- component catalogue ------------------------------------------------------------------

Direction = Literal["higher", "lower", "near_zero", "mid_grey"]


@dataclass(frozen=True)
class Component:
    """What a quality component measures, its unit, and which way is better."""

    unit: str
    description: str
    better: Direction


COMPONENTS: dict[str, Component] = {
    "inter_ocular_px": Component(
        "px", "distance between the two eye landmarks, in original-image pixels (ICAO asks for >= 90)", "higher"
    ),
    "face_size_px": Component("px", "short side of the detection box, in original-image pixels", "higher"),
    "visible_fraction": Component(
        "fraction",
        "share of the face region (located from the 5 landmarks) inside the image (below 1: cut by the border)",
        "higher",
    ),
    "detection_score": Component("probability", "the detector's confidence that the box holds a face", "higher"),
    "yaw_deg": Component("degrees", "head rotation left/right (0: frontal; + turns to the image's right)", "near_zero"),
    "pitch_deg": Component("degrees", "head rotation up/down (0: frontal; + looks up)", "near_zero"),
    "roll_deg": Component("degrees", "in-plane head tilt (0: eyes level; + clockwise in the image)", "near_zero"),
    "sharpness": Component(
        "grey levels",
        "RMS of the 3x3 Laplacian of the luminance over the face region of the aligned crop "
        "(fixed crop size, so comparable across image resolutions)",
        "higher",
    ),
    "brightness": Component("grey levels (0-255)", "mean luminance of the face region of the aligned crop", "mid_grey"),
    "contrast": Component("grey levels", "standard deviation of the luminance of the face region", "higher"),
    "dark_fraction": Component("fraction", f"share of face-region pixels at or below {5} (clipped shadows)", "lower"),
    "bright_fraction": Component(
        "fraction", f"share of face-region pixels at or above {250} (clipped highlights)", "lower"
    ),
    "feature_norm": Component(
        "model units", "L2 norm of the embedding before normalisation (model-specific scale)", "higher"
    ),
    "mirror_consistency": Component(
        "cosine",
        "cosine between the embeddings of the crop and of its horizontal mirror image (costs one extra embedding)",
        "higher",
    ),
}
COMPONENT_NAMES = tuple(COMPONENTS)
UNIFIED_UNIT = "score 0-100 (higher is better)"

DARK_LEVEL = 5  # a pixel at or below this luminance is clipped shadow
BRIGHT_LEVEL = 250  # at or above: clipped highlight
# The face region of an aligned crop, as fractions of its width/height: the 112-px ArcFace
# template's landmarks span x 38-74, y 51-92; this box holds forehead to chin, cheek to cheek
# and leaves out most of the background in the corners.
FACE_REGION = (20 / 112, 24 / 112, 92 / 112, 104 / 112)
# Where the face's detection box lies in a 112-px ArcFace-aligned crop: the median SCRFD box on
# the 942 aligned crops of celeb24 (padded so the detector sees the whole face). The 106-point
# model is run on the aligned crop with this box.
ALIGNED_FACE_BOX = (17 / 112, 10 / 112, 96 / 112, 112 / 112)
MIN_POSE_SPREAD_PX = 2.0  # landmarks closer together than this give no pose (a degenerate face)


def goodness(name: str, values: np.ndarray | float) -> np.ndarray:
    """``values`` of component ``name`` turned so that higher is better (for rankings such as the ERC)."""
    v = np.asarray(values, np.float64)
    better = COMPONENTS[name].better
    if better == "higher":
        return v
    if better == "lower":
        return -v
    if better == "near_zero":
        return -np.abs(v)
    return -np.abs(v - 127.5)  # mid_grey


# ---- geometry -----------------------------------------------------------------------------


def inter_ocular_distance(landmarks: np.ndarray) -> float:
    """Distance between the two eye landmarks (points 0 and 1 of the 5), in their pixels."""
    lm = np.asarray(landmarks, np.float64).reshape(-1, 2)
    return float(np.hypot(*(lm[1] - lm[0])))


def face_size(box: np.ndarray) -> float:
    """Short side of a box ``(x1, y1, x2, y2)``, 0 for an empty or inverted box."""
    x1, y1, x2, y2 = (float(v) for v in np.asarray(box).reshape(4))
    return max(0.0, min(x2 - x1, y2 - y1))


def visible_fraction(landmarks: np.ndarray, image_size: tuple[int, int], grid: int = 16) -> float | None:
    """Share of the face region that lies inside the image ``(width, height)``.

    The face region of the aligned crop (:data:`FACE_REGION`) is mapped back into the image
    through the inverse of the 5-point alignment, sampled on a ``grid`` x ``grid`` lattice, and
    the share of samples inside the image is returned (1: not cut by the border). The detector
    clips its boxes to the image, so the box cannot tell; the landmarks can. ``None`` when the
    landmarks are degenerate (no alignment exists).
    """
    from ..align import ARCFACE_SIZE, alignment_matrix

    try:
        m = alignment_matrix(np.asarray(landmarks, np.float64).reshape(5, 2))
    except ValueError:
        return None
    a, t = m[:, :2], m[:, 2]
    if abs(float(np.linalg.det(a))) < 1e-12:
        return None
    x0, y0, x1, y1 = (v * ARCFACE_SIZE for v in FACE_REGION)
    gx, gy = np.meshgrid(np.linspace(x0, x1, grid), np.linspace(y0, y1, grid))
    crop_pts = np.column_stack([gx.ravel(), gy.ravel()])
    pts = (crop_pts - t) @ np.linalg.inv(a).T
    w, h = image_size
    inside = (pts[:, 0] >= 0) & (pts[:, 0] <= w) & (pts[:, 1] >= 0) & (pts[:, 1] <= h)
    return float(inside.mean())


# Generic 3-D faces for the PnP pose fit, in OpenCV camera axes (x right, y down, z away from
# the camera), the nose tip at the origin.
#
# FACE_MODEL_6: the generic 6-point head of S. Mallick, "Head Pose Estimation using OpenCV and
# Dlib" (LearnOpenCV, 2016): nose tip (0, 0, 0), chin (0, -330, -65), left eye left corner
# (-225, 170, -135), right eye right corner (225, 170, -135), left mouth corner
# (-150, -150, -125), right mouth corner (150, -150, -125), in arbitrary units with y up and z
# towards the viewer; here y and z are negated into camera axes.
FACE_MODEL_6 = np.array(
    [
        [0.0, 0.0, 0.0],
        [0.0, 330.0, 65.0],
        [-225.0, -170.0, 135.0],
        [225.0, -170.0, 135.0],
        [-150.0, 150.0, 125.0],
        [150.0, 150.0, 125.0],
    ],
    np.float64,
)
# The 2d106det points matching FACE_MODEL_6's rows: nose tip 86, chin 0, outer eye corners 35
# and 93, mouth corners 52 and 61 (read off the model's output on frontal photos; the test
# suite checks them against the detector's 5 landmarks).
LANDMARKS_106_FOR_MODEL_6 = (86, 0, 35, 93, 52, 61)


# The frontal layout of the detector's 5 landmarks in a 112-px aligned crop: the median SCRFD-500M
# landmarks on the 942 ArcFace-aligned crops of celeb24, made left-right symmetric about x = 56.
# (The ArcFace template itself is not the detector's convention: SCRFD puts the nose tip lower
# and the mouth corners higher, so the template would read every frontal face as pitched down.)
FRONTAL_5 = np.array(
    [[37.63, 52.29], [74.37, 52.29], [56.0, 73.29], [41.07, 88.36], [70.93, 88.36]],
    np.float64,
)


def _face_model_5() -> np.ndarray:
    """The 5-point generic face: x, y of :data:`FRONTAL_5` (the nose tip at the origin), depth from
    FACE_MODEL_6 (eyes 135, mouth corners 125 units behind the nose tip) scaled by the ratio of
    the mouth widths (29.86 px here, 300 units there)."""
    s = float(FRONTAL_5[4, 0] - FRONTAL_5[3, 0]) / 300.0
    depth = np.array([135.0, 135.0, 0.0, 125.0, 125.0]) * s
    return np.column_stack([FRONTAL_5 - FRONTAL_5[2], depth])


FACE_MODEL_5 = _face_model_5()


@dataclass(frozen=True)
class Pose:
    """Head pose in degrees (see :data:`COMPONENTS` for the signs) and how it was measured."""

    yaw: float
    pitch: float
    roll: float
    method: Literal["5-point", "106-point"]


def solve_pose(image_points: np.ndarray, model_points: np.ndarray) -> tuple[float, float, float] | None:
    """(yaw, pitch, roll) in degrees of 2-D ``image_points`` fitted to the 3-D ``model_points``.

    A PnP fit (``cv2.solvePnP``, SQPnP) with a nearly orthographic camera on the points'
    centroid: the pose is relative to the line of sight, independent of where the face is in
    the image and of the image size. Angles are the ``cv2.RQDecomp3x3`` decomposition
    ``R = Rx(pitch) · Ry(yaw) · Rz(roll)``. ``None`` when the points are degenerate (closer
    together than :data:`MIN_POSE_SPREAD_PX`, non-finite) or the fit fails.
    """
    import cv2

    pts = np.asarray(image_points, np.float64).reshape(-1, 2)
    obj = np.asarray(model_points, np.float64).reshape(-1, 3)
    if pts.shape[0] != obj.shape[0] or pts.shape[0] < 4 or not np.all(np.isfinite(pts)):
        return None
    centre = pts.mean(0)
    spread = float(np.sqrt(((pts - centre) ** 2).sum(1).mean()))
    if spread < MIN_POSE_SPREAD_PX:
        return None
    # A focal length of 100 face sizes puts the camera ~100 face sizes away: perspective effects
    # stay well below a degree, so the fit is the face's rotation relative to the line of sight.
    f = 100.0 * spread
    k = np.array([[f, 0.0, centre[0]], [0.0, f, centre[1]], [0.0, 0.0, 1.0]])
    try:
        ok, rvec, _ = cv2.solvePnP(obj, pts, k, None, flags=cv2.SOLVEPNP_SQPNP)
    except cv2.error:
        return None
    if not ok or not np.all(np.isfinite(rvec)):
        return None
    rot, _ = cv2.Rodrigues(rvec)
    angles = euler_angles(rot)
    return angles if all(math.isfinite(a) for a in angles) else None


def euler_angles(rot: np.ndarray) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in degrees of a face rotation ``R = Rx(-pitch) · Ry(-yaw) · Rz(roll)`` (camera axes).

    With the generic face looking at the camera along -z: positive yaw turns the nose towards
    the image's right, positive pitch raises it, positive roll tilts the face clockwise in the
    image (y points down).
    """
    r = np.asarray(rot, np.float64)
    b = math.asin(max(-1.0, min(1.0, float(r[0, 2]))))
    a = math.atan2(-float(r[1, 2]), float(r[2, 2]))
    c = math.atan2(-float(r[0, 1]), float(r[0, 0]))
    return -math.degrees(b), -math.degrees(a), math.degrees(c)


def pose_from_5(landmarks: np.ndarray) -> Pose | None:
    """Head pose from the detector's 5 landmarks: :func:`affine_pose` against :data:`FACE_MODEL_5`."""
    angles = affine_pose(landmarks, FACE_MODEL_5)
    return None if angles is None else Pose(*angles, method="5-point")


def affine_pose(image_points: np.ndarray, model_points: np.ndarray) -> tuple[float, float, float] | None:
    """(yaw, pitch, roll) in degrees from landmark geometry, in closed form (a scaled-orthographic camera).

    The affine map from the centred 3-D model to the centred 2-D points is fitted by least
    squares; its two rows, made orthonormal (the nearest rotation rows, by SVD), and their cross
    product give the rotation, read by :func:`euler_angles`. Exact for a weak-perspective view
    of the model; about 20 µs. ``None`` for degenerate points (see :func:`solve_pose`).
    """
    pts = np.asarray(image_points, np.float64).reshape(-1, 2)
    obj = np.asarray(model_points, np.float64).reshape(-1, 3)
    if pts.shape[0] != obj.shape[0] or pts.shape[0] < 4 or not np.all(np.isfinite(pts)):
        return None
    pc = pts - pts.mean(0)
    if float(np.sqrt((pc**2).sum(1).mean())) < MIN_POSE_SPREAD_PX:
        return None
    oc = obj - obj.mean(0)
    a, *_ = np.linalg.lstsq(oc, pc, rcond=None)  # pc ≈ oc @ a, a is 3x2
    u, sv, vt = np.linalg.svd(a.T, full_matrices=False)  # a.T = u diag(sv) vt, 2x3
    if sv[-1] <= 1e-9 * max(sv[0], 1e-300):
        return None
    r1, r2 = u @ vt  # the nearest 2x3 with orthonormal rows
    r3 = (r1[1] * r2[2] - r1[2] * r2[1], r1[2] * r2[0] - r1[0] * r2[2], r1[0] * r2[1] - r1[1] * r2[0])
    rot = np.array([r1, r2, r3])
    angles = euler_angles(rot)
    return angles if all(math.isfinite(v) for v in angles) else None


def pose_from_106(points: np.ndarray) -> Pose | None:
    """Head pose from 2d106det's 106 points (6 of them fitted to :data:`FACE_MODEL_6`)."""
    pts = np.asarray(points, np.float64).reshape(-1, 2)
    if pts.shape[0] != 106:
        raise InvalidArgumentError(f"expected 106 landmarks, got {pts.shape[0]}")
    angles = solve_pose(pts[list(LANDMARKS_106_FOR_MODEL_6)], FACE_MODEL_6)
    return None if angles is None else Pose(*angles, method="106-point")


# ---- the aligned crop ---------------------------------------------------------------------


def _face_region(crop: np.ndarray) -> np.ndarray:
    """Luminance (float32, 0-255) of the face region of an aligned BGR crop."""
    import cv2

    img = np.asarray(crop)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise InvalidArgumentError(f"an aligned crop must be (H, W, 3) uint8 BGR, got {img.shape} {img.dtype}")
    h, w = img.shape[:2]
    x0, y0, x1, y1 = FACE_REGION
    region = img[int(round(y0 * h)) : int(round(y1 * h)), int(round(x0 * w)) : int(round(x1 * w))]
    return cv2.cvtColor(np.ascontiguousarray(region), cv2.COLOR_BGR2GRAY).astype(np.float32)


def sharpness(crop: np.ndarray) -> float:
    """RMS of the 3x3 Laplacian of the luminance over the crop's face region, in grey levels."""
    import cv2

    lap = cv2.Laplacian(_face_region(crop), cv2.CV_32F, ksize=1)
    return float(np.sqrt(max(float(lap.var()), 0.0)))


@dataclass(frozen=True)
class Exposure:
    """Luminance statistics of the face region: mean and spread (grey levels), clipped shares."""

    brightness: float
    contrast: float
    dark_fraction: float
    bright_fraction: float


def exposure(crop: np.ndarray) -> Exposure:
    """Mean and standard deviation of the face region's luminance, and its clipped fractions."""
    grey = _face_region(crop)
    n = max(grey.size, 1)
    return Exposure(
        brightness=float(grey.mean()) if grey.size else 0.0,
        contrast=float(grey.std()) if grey.size else 0.0,
        dark_fraction=float((grey <= DARK_LEVEL).sum()) / n,
        bright_fraction=float((grey >= BRIGHT_LEVEL).sum()) / n,
    )


def mirror_crops(crops: np.ndarray) -> np.ndarray:
    """The crops flipped left-right (what mirror consistency embeds)."""
    return np.ascontiguousarray(np.asarray(crops)[:, :, ::-1])


def mirror_consistency(embeddings: np.ndarray, mirrored: np.ndarray) -> np.ndarray:
    """Cosine between each unit embedding and the unit embedding of its mirrored crop."""
    a = np.asarray(embeddings, np.float64)
    b = np.asarray(mirrored, np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise InvalidArgumentError(f"embeddings and mirrored embeddings disagree: {a.shape} vs {b.shape}")
    na = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.clip((a * b).sum(1) / np.where(na > 0, na, 1.0), -1.0, 1.0)
