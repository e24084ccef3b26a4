"""Alignment math: the similarity transform is exact on noiseless data and rejects reflections."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from facematch.align import ARCFACE_TEMPLATE, alignment_matrix, estimate_similarity, norm_crop, transform_points


def _similarity(angle: float, scale: float, tx: float, ty: float) -> np.ndarray:
    c, s = math.cos(angle) * scale, math.sin(angle) * scale
    return np.array([[c, -s, tx], [s, c, ty]])


@settings(max_examples=60, deadline=None)
@given(
    angle=st.floats(-math.pi, math.pi),
    scale=st.floats(0.05, 20.0),
    tx=st.floats(-500, 500),
    ty=st.floats(-500, 500),
)
def test_recovers_a_known_similarity(angle: float, scale: float, tx: float, ty: float) -> None:
    m_true = _similarity(angle, scale, tx, ty)
    src = ARCFACE_TEMPLATE.astype(np.float64) * 3.0 + 17.0
    dst = transform_points(m_true, src)
    m = estimate_similarity(src, dst)
    assert np.allclose(transform_points(m, src), dst, atol=1e-3 * max(1.0, scale))


def test_template_maps_to_itself() -> None:
    m = alignment_matrix(ARCFACE_TEMPLATE)
    assert np.allclose(m, [[1, 0, 0], [0, 1, 0]], atol=1e-6)


def test_mirrored_points_give_a_rotation_not_a_reflection() -> None:
    mirrored = ARCFACE_TEMPLATE.copy()
    mirrored[:, 0] = 112 - mirrored[:, 0]
    m = estimate_similarity(mirrored, ARCFACE_TEMPLATE)
    assert np.linalg.det(m[:, :2]) > 0


def test_degenerate_points_raise() -> None:
    with pytest.raises(ValueError):
        estimate_similarity(np.zeros((5, 2)), ARCFACE_TEMPLATE)
    with pytest.raises(ValueError):
        estimate_similarity(np.zeros((5, 3)), np.zeros((5, 3)))


def test_norm_crop_moves_landmarks_onto_the_template() -> None:
    # draw five dots at known positions of a rotated, scaled face, warp, and find the dots again
    m_face = _similarity(0.3, 2.5, 100.0, 60.0)
    lms = transform_points(m_face, ARCFACE_TEMPLATE)
    img = np.zeros((500, 500, 3), np.uint8)
    for x, y in lms:
        img[int(round(y)) - 2 : int(round(y)) + 3, int(round(x)) - 2 : int(round(x)) + 3] = 255
    crop = norm_crop(img, lms)
    assert crop.shape == (112, 112, 3) and crop.dtype == np.uint8
    for x, y in ARCFACE_TEMPLATE:
        assert crop[int(round(y)), int(round(x))].max() > 100
