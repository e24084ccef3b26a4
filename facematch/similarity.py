"""Vectors on the unit hypersphere: the one L2 normalisation and cosine similarity.

Every embedding facematch stores or compares is projected here (model outputs in the
embedder wrapper, caller-supplied vectors in the gallery and in ``compare``, exported
models in validation), so "unit norm" means the same thing everywhere.
"""

from __future__ import annotations

import numpy as np

from .errors import InvalidArgumentError

EPS = 1e-12


def l2_normalize(
    x: np.ndarray, eps: float = EPS, dtype: type[np.floating] = np.float32
) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``x`` (N, D) projected onto the unit hypersphere, and their original norms (N,).

    Computed and returned in ``dtype`` (float32; export validation asks for float64 to
    compare cosines a few 1e-6 below 1). Rows of norm below ``eps`` stay near zero.
    """
    arr = np.asarray(x, dtype=dtype)
    if arr.ndim != 2:
        raise InvalidArgumentError(f"expected an (N, D) array of vectors, got shape {arr.shape}")
    norms = np.linalg.norm(arr, axis=1)
    return (arr / np.maximum(norms, eps)[:, None]).astype(dtype), norms.astype(dtype)


def unit_rows(x: np.ndarray) -> np.ndarray:
    """``x`` with every row scaled to unit norm (see :func:`l2_normalize`)."""
    return l2_normalize(np.atleast_2d(np.asarray(x, np.float32)))[0]


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity between rows of ``a`` (N, D) and ``b`` (M, D) → (N, M)."""
    an, bn = unit_rows(a), unit_rows(b)
    if an.shape[1] != bn.shape[1]:
        raise InvalidArgumentError(f"embedding dimensions differ: {an.shape[1]} vs {bn.shape[1]}")
    out: np.ndarray = an @ bn.T
    return out


__all__ = ["cosine_similarity", "l2_normalize", "unit_rows"]
