"""106-point landmark wrapper (InsightFace 2d106det layout, described by a landmarks card)."""

from __future__ import annotations

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

    def predict(self, image: np.ndarray, faces: list[Face]) -> np.ndarray:
        """(N, num_points, 2) landmarks in image pixels for each face box, in one batched call."""
        import cv2

        spec = self.card.landmarks
        assert spec is not None
        k = spec.num_points
        if not faces:
            return np.zeros((0, k, 2), np.float32)
        mats = [box_crop_matrix(f.box, self.size, spec.box_scale) for f in faces]
        crops = [cv2.warpAffine(image, m, (self.size, self.size), borderValue=(0, 0, 0)) for m in mats]
        blob = to_blob(crops, self.card.input)
        raw = np.asarray(self.session.run(None, {self._input_name: blob})[0], np.float32).reshape(len(faces), k, 2)
        pts = (raw + 1.0) * (self.size / 2.0)
        out = np.empty_like(pts)
        for i, m in enumerate(mats):
            inv = cv2.invertAffineTransform(m)
            out[i] = pts[i] @ inv[:, :2].T + inv[:, 2]
        return out


__all__ = ["Landmarks106", "box_crop_matrix"]
