"""Face alignment: a similarity transform from 5 landmarks onto the ArcFace template.

Pure functions (numpy, plus OpenCV for the warp). The template is the standard
112×112 ArcFace 5-point layout: left eye, right eye, nose tip, left and right mouth
corners, in the image's own left/right.
"""

from __future__ import annotations

import numpy as np

ARCFACE_TEMPLATE = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float32,
)
ARCFACE_SIZE = 112
TEMPLATES = {"arcface_112": (ARCFACE_TEMPLATE, ARCFACE_SIZE)}


def estimate_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity transform (rotation, uniform scale, translation) mapping src to dst.

    Umeyama's closed form. ``src`` and ``dst`` are (N, 2) with N >= 2. Returns the 2×3
    affine matrix ``M`` with ``dst ≈ M[:, :2] @ src + M[:, 2]``. Reflections are excluded.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or src.shape[0] < 2:
        raise ValueError(f"src and dst must both be (N>=2, 2), got {src.shape} and {dst.shape}")
    n = src.shape[0]
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s_c, d_c = src - mu_s, dst - mu_d
    var_s = (s_c**2).sum() / n
    if var_s <= 1e-12:
        raise ValueError("source points are degenerate (all at one place)")
    cov = d_c.T @ s_c / n
    u, sig, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[-1] = -1.0
    rot = u @ np.diag(d) @ vt
    scale = float((sig * d).sum() / var_s)
    trans = mu_d - scale * rot @ mu_s
    m = np.zeros((2, 3), dtype=np.float64)
    m[:, :2] = scale * rot
    m[:, 2] = trans
    return m


def alignment_matrix(landmarks: np.ndarray, template: str = "arcface_112") -> np.ndarray:
    """The 2×3 matrix warping an image so its 5 landmarks land on the template."""
    tpl, _ = TEMPLATES[template]
    return estimate_similarity(np.asarray(landmarks, np.float64).reshape(5, 2), tpl)


def transform_points(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 2×3 affine matrix to (N, 2) points."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return (pts @ matrix[:, :2].T + matrix[:, 2]).astype(np.float32)


def norm_crop(image: np.ndarray, landmarks: np.ndarray, template: str = "arcface_112") -> np.ndarray:
    """Warp ``image`` (BGR uint8, H×W×3) to the template's aligned crop (112×112×3 for ArcFace)."""
    import cv2

    _, size = TEMPLATES[template]
    m = alignment_matrix(landmarks, template)
    return cv2.warpAffine(image, m, (size, size), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0))


def norm_crops(image: np.ndarray, landmarks: np.ndarray, template: str = "arcface_112") -> np.ndarray:
    """Aligned crops for several faces: ``landmarks`` is (N, 5, 2); returns (N, 112, 112, 3) BGR uint8."""
    _, size = TEMPLATES[template]
    lms = np.asarray(landmarks, dtype=np.float32).reshape(-1, 5, 2)
    if len(lms) == 0:
        return np.zeros((0, size, size, 3), dtype=np.uint8)
    return np.stack([norm_crop(image, lm, template) for lm in lms])


__all__ = [
    "ARCFACE_SIZE",
    "ARCFACE_TEMPLATE",
    "TEMPLATES",
    "alignment_matrix",
    "estimate_similarity",
    "norm_crop",
    "norm_crops",
    "transform_points",
]
