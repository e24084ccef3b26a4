"""A flat (exact) template index on PyTorch: one matrix on the GPU (or CPU), matmul + ``topk``.

For machines with PyTorch on CUDA but no FAISS-GPU. ``IndexConfig(engine="torch")``:

- ``storage="fp32"``: exact, the same scores as FAISS flat (fp32 accumulation);
- ``storage="fp16"``: half the memory, scores within ~1e-3 of exact (fp16 products,
  fp32 accumulation on the GPU); the gallery's ``rerank`` re-scores from the stored fp32;
- ``storage="sq8"``: int8 codes with one scale per dimension (a quarter of fp32; the scale
  widens, re-quantising in place, when a wider vector arrives), dequantised block by block
  into fp16 for the matmul; use with ``rerank=True``.

No ``k`` limit (FAISS-GPU stops at 2048). ``add`` appends into spare capacity (doubling);
``remove`` moves the last rows into the freed slots, so both change the matrix in place and
never copy it whole. Queries are scanned in blocks of ``SCAN_ROWS`` templates, keeping a
running top-k, so a 10M-template gallery never materialises a 10M-wide score matrix per
query batch. The index is rebuilt from the store on open (nothing is saved beside it).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import numpy as np

from ..errors import BackendUnavailableError, InvalidArgumentError
from .config import IndexConfig

logger = logging.getLogger(__name__)

SCAN_ROWS = 1 << 20  # templates scored per block (a 1M x 64-query fp32 block is 256 MB)
_MIN_CAPACITY = 1024


def import_torch() -> Any:
    try:
        import torch
    except ImportError as exc:
        raise BackendUnavailableError("engine='torch' needs PyTorch: pip install 'facematch[export]'") from exc
    return torch


def torch_device(config: IndexConfig) -> str:
    """``cuda`` or ``cpu`` for a config's ``device`` (``auto``: CUDA when torch sees a GPU)."""
    torch = import_torch()
    has_cuda = bool(torch.cuda.is_available())
    if config.device == "gpu" and not has_cuda:
        raise BackendUnavailableError(
            f"engine='torch' with device='gpu', but torch {torch.__version__} sees no CUDA GPU (a CPU build?)"
        )
    return "cuda" if config.device != "cpu" and has_cuda else "cpu"


class TorchIndex:
    """Exact inner-product search over unit vectors held in one torch matrix (see the module docstring)."""

    def __init__(self, dim: int, config: IndexConfig, *, device: str | None = None) -> None:
        if config.kind != "flat":
            raise InvalidArgumentError(f"engine='torch' is a flat (exact) index; kind={config.kind!r} needs FAISS")
        self._torch = torch = import_torch()
        self.dim = int(dim)
        self.shared = False
        self.config = config
        self.device = device or torch_device(config)
        self.storage = config.storage
        self._dtype = {"fp32": torch.float32, "fp16": torch.float16, "sq8": torch.int8}[self.storage]
        # CPU matmul in fp16 is slow and not always supported: compute in fp32 there.
        self._compute = torch.float16 if self.device == "cuda" and self.storage != "fp32" else torch.float32
        self._scale: Any = None  # sq8: per-dimension scale (dim,)
        self._lock = threading.RLock()
        self._data = torch.zeros((0, self.dim), dtype=self._dtype, device=self.device)
        self._ids = np.zeros((0,), np.int64)
        self._pos: dict[int, int] = {}
        self._n = 0

    # ---- content ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._n

    def _check(self, ids: np.ndarray, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ids = np.ascontiguousarray(np.asarray(ids, dtype=np.int64).reshape(-1))
        vectors = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32))
        if vectors.ndim != 2 or vectors.shape[1] != self.dim or vectors.shape[0] != ids.shape[0]:
            raise InvalidArgumentError(f"expected {ids.shape[0]} vectors of dim {self.dim}, got shape {vectors.shape}")
        return ids, vectors

    def _encode(self, vectors: np.ndarray) -> Any:
        torch = self._torch
        t = torch.from_numpy(vectors).to(self.device)
        if self.storage != "sq8":
            return t.to(self._dtype)
        # one scale per dimension, from the range seen so far (at least 3/sqrt(dim): a few vectors
        # would give a too narrow one); a wider vector widens it and the stored codes are rescaled
        floor = 3.0 / (self.dim**0.5) / 127.0
        need = torch.clamp(t.abs().amax(dim=0) * 1.05 / 127.0, min=floor) if len(t) else None
        if self._scale is None:
            self._scale = need if need is not None else torch.full((self.dim,), floor, device=self.device)
        elif need is not None and bool((need > self._scale).any()):
            self._rescale(torch.maximum(self._scale, need))
        return torch.clamp(torch.round(t / self._scale), -127, 127).to(torch.int8)

    def _rescale(self, new_scale: Any) -> None:
        """Re-quantise the stored int8 codes to a wider per-dimension scale (in place, block by block)."""
        torch = self._torch
        ratio = self._scale / new_scale
        for start in range(0, self._n, SCAN_ROWS):
            block = self._data[start : min(self._n, start + SCAN_ROWS)]
            block.copy_(torch.clamp(torch.round(block.float() * ratio), -127, 127).to(torch.int8))
        self._scale = new_scale

    def _decode(self, block: Any) -> Any:
        if self.storage == "sq8":
            return block.to(self._compute) * self._scale.to(self._compute)
        return block.to(self._compute)

    def _reserve(self, n: int) -> None:
        torch = self._torch
        cap = int(self._data.shape[0])
        if n <= cap:
            return
        new_cap = max(_MIN_CAPACITY, cap * 2, n)
        grown = torch.zeros((new_cap, self.dim), dtype=self._dtype, device=self.device)
        grown[: self._n] = self._data[: self._n]
        self._data = grown
        ids = np.zeros((new_cap,), np.int64)
        ids[: self._n] = self._ids[: self._n]
        self._ids = ids

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        ids, vectors = self._check(ids, vectors)
        if ids.size == 0:
            return
        with self._lock:
            known = [int(i) for i in ids.tolist() if int(i) in self._pos]
            if known or len(set(ids.tolist())) != ids.size:
                raise InvalidArgumentError(f"template ids already in the index: {sorted(set(known))[:5] or 'repeated'}")
            start = self._n
            self._reserve(start + ids.size)
            self._data[start : start + ids.size] = self._encode(vectors)
            self._ids[start : start + ids.size] = ids
            for offset, i in enumerate(ids.tolist()):
                self._pos[int(i)] = start + offset
            self._n += int(ids.size)

    def remove(self, ids: np.ndarray) -> None:
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        with self._lock:
            for i in ids.tolist():
                pos = self._pos.pop(int(i), None)
                if pos is None:
                    continue
                last = self._n - 1
                if pos != last:  # the last row fills the hole: no copy of the matrix
                    self._data[pos] = self._data[last]
                    moved = int(self._ids[last])
                    self._ids[pos] = moved
                    self._pos[moved] = pos
                self._n = last

    def ids(self) -> np.ndarray:
        with self._lock:
            return np.sort(self._ids[: self._n].copy())

    def rebuild(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        ids, vectors = self._check(ids, vectors)
        torch = self._torch
        with self._lock:
            self._data = torch.zeros((0, self.dim), dtype=self._dtype, device=self.device)
            self._ids = np.zeros((0,), np.int64)
            self._pos = {}
            self._n = 0
            self._scale = None
            if self.storage == "sq8" and ids.size:
                self._encode(vectors)  # sets the per-dimension scale from the whole set at once
            self.add(ids, vectors)

    # ---- search ----------------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = np.ascontiguousarray(np.asarray(queries, dtype=np.float32))
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise InvalidArgumentError(f"queries must have shape (n, {self.dim}), got {q.shape}")
        nq, width = q.shape[0], max(int(k), 0)
        scores_out = np.full((nq, width), -np.inf, np.float32)
        ids_out = np.full((nq, width), -1, np.int64)
        with self._lock:
            n = self._n
            if n == 0 or width == 0 or nq == 0:
                return scores_out, ids_out
            torch = self._torch
            kk = min(width, n)
            qt = torch.from_numpy(q).to(self.device).to(self._compute)
            best_s = best_i = None
            for start in range(0, n, SCAN_ROWS):
                block = self._decode(self._data[start : min(n, start + SCAN_ROWS)])
                s = (qt @ block.T).float()
                top_s, top_i = torch.topk(s, min(kk, s.shape[1]), dim=1)
                top_i = top_i + start
                if best_s is None:
                    best_s, best_i = top_s, top_i
                else:
                    merged_s = torch.cat([best_s, top_s], dim=1)
                    merged_i = torch.cat([best_i, top_i], dim=1)
                    best_s, order = torch.topk(merged_s, min(kk, merged_s.shape[1]), dim=1)
                    best_i = torch.gather(merged_i, 1, order)
            assert best_s is not None and best_i is not None
            pos = best_i.cpu().numpy()
            scores_out[:, :kk] = best_s.cpu().numpy()
            ids_out[:, :kk] = self._ids[pos]
        return scores_out, ids_out

    # ---- facts and lifecycle -----------------------------------------------------------------
    @property
    def needs_rebuild(self) -> bool:
        return False

    def describe(self) -> str:
        return f"torch:flat/{self.storage}@{self.device}"

    def memory_bytes(self) -> int:
        return int(self._data.element_size() * self._data.numel())

    def save(self) -> None:
        """Nothing to write: the index is rebuilt from the store's fp32 embeddings on open."""

    def close(self) -> None:
        with self._lock:
            self._data = self._torch.zeros((0, self.dim), dtype=self._dtype, device=self.device)
            self._ids = np.zeros((0,), np.int64)
            self._pos = {}
            self._n = 0


__all__ = ["SCAN_ROWS", "TorchIndex", "torch_device"]
