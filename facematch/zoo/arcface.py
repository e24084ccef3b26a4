"""ArcFace-family embedder wrapper: aligned crops in, unit-norm embeddings out."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..cards import ModelCard
from ..errors import InvalidArgumentError, InvalidImageError
from ..preprocess import to_blob
from ..similarity import l2_normalize


class ArcFaceEmbedder:
    """Embeds aligned face crops with an ONNX model described by an embedding card."""

    def __init__(self, session: Any, card: ModelCard, *, max_batch: int = 32) -> None:
        if card.task != "embedding" or card.embedding is None or card.input.size is None:
            raise InvalidArgumentError(f"card {card.id!r} is not an embedding card")
        self.session = session
        self.card = card
        self.dim = card.embedding.dim
        self.size: tuple[int, int] = card.input.size
        self.max_batch = max_batch if card.input.dynamic_batch else 1
        self._input_name = session.get_inputs()[0].name

    def check_crops(self, crops: np.ndarray) -> np.ndarray:
        crops = np.asarray(crops)
        w, h = self.size
        if crops.ndim != 4 or crops.shape[1:] != (h, w, 3) or crops.dtype != np.uint8:
            raise InvalidImageError(
                f"aligned crops must be (N, {h}, {w}, 3) uint8 BGR, got {crops.shape} {crops.dtype}"
            )
        return crops

    def embed(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Unit-norm embeddings (N, dim) and pre-normalisation norms (N,) for aligned BGR crops."""
        crops = self.check_crops(crops)
        n = len(crops)
        if n == 0:
            return np.zeros((0, self.dim), np.float32), np.zeros((0,), np.float32)
        spec = self.card.embedding
        assert spec is not None
        feats, norms = [], []
        for start in range(0, n, self.max_batch):
            blob = to_blob(crops[start : start + self.max_batch], self.card.input, self.size)
            outs = self.session.run(None, {self._input_name: blob})
            raw = np.asarray(outs[0], dtype=np.float32).reshape(-1, self.dim)
            emb, nrm = l2_normalize(raw)
            if spec.norm_output_index is not None:
                nrm = np.asarray(outs[spec.norm_output_index], dtype=np.float32).reshape(-1)
            feats.append(emb)
            norms.append(nrm)
        return np.concatenate(feats), np.concatenate(norms)


__all__ = ["ArcFaceEmbedder"]
