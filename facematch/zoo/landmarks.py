"""106-point landmark wrapper (InsightFace 2d106det layout, described by a landmarks card).

Used by :mod:`facematch.quality` for the optional 106-point head pose, measured on the aligned
crops the shared ``prepare`` step made (:meth:`Landmarks106.predict_crops`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..cards import ModelCard
from ..errors import InvalidArgumentError
from ..preprocess import to_blob
from ..types import Face


def box_crop_matrix(box: np.ndarray, size: int, box_scale: float) -> np.ndarray:
    """2×3 matrix mapping image pixels into a ``size``² crop centred on ``box``, ``box_scale`` boxes wide."""
    x1, y1, x2, y2 = (float(v) for v in box)
    cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
    s = size / (max(x2 - x1, y2 - y1, 1e-6) * box_scale)
    return np.array([[s, 0.0, size / 2.0 - s * cx], [0.0, s, size / 2.0 - s * cy]], dtype=np.float64)


class Landmarks106:
    """Predicts dense 2-D landmarks for detected faces (useful for pose and quality checks)."""

    def __init__(self, session: Any, card: ModelCard) -> None:
        if card.task != "landmarks" or card.landmarks is None or card.input.size is None:
            raise InvalidArgumentError(f"card {card.id!r} is not a landmarks card")
        self.session = session
        self.card = card
        self.size = card.input.size[0]
        self._input_name = session.get_inputs()[0].name
        self.max_batch = 32 if card.input.dynamic_batch else 1

    @classmethod
    def load(
        cls, ref: str | Any = None, *, providers: Sequence[str] | None = None, threads: int | None = None
    ) -> Landmarks106:
        """The landmark model of card ``ref`` (default: the pack's ``2d106det``), checked and loaded."""
        from ..cards import DEFAULT_LANDMARKS
        from ..matcher import _load_model

        card, session = _load_model(ref or DEFAULT_LANDMARKS, "landmarks", providers, threads)
        return cls(session, card)

    def predict(self, image: np.ndarray, faces: list[Face]) -> np.ndarray:
        """(N, num_points, 2) landmarks in image pixels for each face box, in one batched call."""
        spec = self.card.landmarks
        assert spec is not None
        if not faces:
            return np.zeros((0, spec.num_points, 2), np.float32)
        mats = [box_crop_matrix(f.box, self.size, spec.box_scale) for f in faces]
        return self._run([image] * len(faces), mats)

    def predict_crops(self, crops: np.ndarray, box: np.ndarray) -> np.ndarray:
        """(N, num_points, 2) landmarks of N same-size images (e.g. aligned crops) that share one face box."""
        spec = self.card.landmarks
        assert spec is not None
        images = np.asarray(crops)
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise InvalidArgumentError(f"crops must be (N, H, W, 3) uint8, got {images.shape} {images.dtype}")
        if len(images) == 0:
            return np.zeros((0, spec.num_points, 2), np.float32)
        m = box_crop_matrix(np.asarray(box, np.float64), self.size, spec.box_scale)
        return self._run(list(images), [m] * len(images))

    def _run(self, images: Sequence[np.ndarray], mats: Sequence[np.ndarray]) -> np.ndarray:
        import cv2

        spec = self.card.landmarks
        assert spec is not None
        k = spec.num_points
        crops = [
            cv2.warpAffine(img, m, (self.size, self.size), borderValue=(0, 0, 0))
            for img, m in zip(images, mats, strict=True)
        ]
        raw = []
        for start in range(0, len(crops), self.max_batch):
            blob = to_blob(crops[start : start + self.max_batch], self.card.input)
            raw.append(np.asarray(self.session.run(None, {self._input_name: blob})[0], np.float32).reshape(-1, k, 2))
        pts = (np.concatenate(raw) + 1.0) * (self.size / 2.0)
        out = np.empty_like(pts)
        for i, m in enumerate(mats):
            inv = cv2.invertAffineTransform(m)
            out[i] = pts[i] @ inv[:, :2].T + inv[:, 2]
        return out


__all__ = ["Landmarks106", "box_crop_matrix"]
