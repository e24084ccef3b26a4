"""Synthetic data for the gallery tests: clustered unit vectors and a calibration built from them."""

from __future__ import annotations

import numpy as np

from facematch.calibration import Calibration

MODEL = "synthetic-128"
DIM = 128


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def noisy(centres: np.ndarray, cos: float, rng: np.random.Generator) -> np.ndarray:
    """Unit vectors at cosine ~``cos`` from each centre (fresh noise per row)."""
    noise = unit(rng.standard_normal(centres.shape))
    return unit(cos * centres + np.sqrt(1 - cos**2) * noise)


def identities(
    n: int, per: int, rng: np.random.Generator, cos: float = 0.8, dim: int = DIM
) -> tuple[np.ndarray, np.ndarray]:
    """(n, per, dim) templates: ``per`` views of ``n`` random identities."""
    centres = unit(rng.standard_normal((n, dim)))
    return np.stack([noisy(centres, cos, rng) for _ in range(per)], axis=1), centres


def calibration(rng: np.random.Generator, dim: int = DIM, n: int = 150_000) -> Calibration:
    """Impostor calibration of random ``dim``-D unit vectors (the impostor law of this synthetic model)."""
    a = unit(rng.standard_normal((n, dim)))
    b = unit(rng.standard_normal((n, dim)))
    impostor = np.einsum("ij,ij->i", a, b)
    genuine = np.full(100, 0.6)
    return Calibration.from_scores(genuine, impostor, set_name="synthetic", command="tests/_gallery_util.py")
