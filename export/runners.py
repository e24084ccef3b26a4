"""Uniform "model input → raw embedding (+ norm)" runners over ONNX Runtime sessions and PyTorch modules."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from facematch.cards import InputSpec, ModelCard

logger = logging.getLogger(__name__)


class Runner(Protocol):
    """Something that maps a preprocessed input batch to raw embeddings and optional norms."""

    name: str
    spec: InputSpec
    fixed_batch: int | None  # None = any batch size

    def run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]: ...


def onnx_fixed_batch(model_bytes: bytes) -> int | None:
    """The declared batch size of the first graph input (None when symbolic)."""
    import onnx

    dims = onnx.load_from_string(model_bytes).graph.input[0].type.tensor_type.shape.dim
    return int(dims[0].dim_value) if len(dims) and dims[0].HasField("dim_value") else None


class OnnxRunner:
    """An ONNX model (file or bytes) on the CPU provider, fed per its card's input spec."""

    def __init__(self, model: str | Path | bytes, card: ModelCard, *, threads: int | None = None) -> None:
        from facematch.runtime import create_session

        data = model if isinstance(model, bytes) else Path(model).read_bytes()
        self.name = card.id if isinstance(model, bytes) else str(model)
        self.spec = card.input
        self.fixed_batch = onnx_fixed_batch(data)
        self.norm_index = card.embedding.norm_output_index if card.embedding else None
        self.session = create_session(
            data, providers=["CPUExecutionProvider"], threads=threads, dynamic_batch=self.fixed_batch is None
        )
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.input_dtype = np.float16 if inp.type == "tensor(float16)" else np.float32

    def run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        outs = self.session.run(None, {self.input_name: x.astype(self.input_dtype, copy=False)})
        emb = np.asarray(outs[0], dtype=np.float32).reshape(len(x), -1)
        norm = None
        if self.norm_index is not None:
            norm = np.asarray(outs[self.norm_index], dtype=np.float32).reshape(-1)
        return emb, norm


class TorchRunner:
    """A PyTorch backbone (eval mode, CPU) returning its raw features."""

    def __init__(self, model: Any, spec: InputSpec, name: str = "pytorch") -> None:
        self.model = model.eval()
        self.spec = spec
        self.name = name
        self.fixed_batch: int | None = None

    def run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        import torch

        with torch.inference_mode():
            out = self.model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
        if isinstance(out, (tuple, list)):
            return out[0].float().numpy(), out[1].float().numpy().reshape(-1)
        return out.float().numpy(), None


def run_batched(runner: Runner, x: np.ndarray, batch: int = 32) -> tuple[np.ndarray, np.ndarray | None]:
    """Run ``x`` in chunks of ``batch`` (the runner's fixed batch when it has one, padding the last chunk)."""
    step = runner.fixed_batch or batch
    embs, norms = [], []
    for start in range(0, len(x), step):
        chunk = x[start : start + step]
        n = len(chunk)
        if runner.fixed_batch and n < step:
            chunk = np.concatenate([chunk, np.zeros((step - n, *chunk.shape[1:]), chunk.dtype)])
        e, nr = runner.run(chunk)
        embs.append(e[:n])
        if nr is not None:
            norms.append(nr[:n])
    emb = np.concatenate(embs) if embs else np.zeros((0, 0), np.float32)
    return emb, (np.concatenate(norms) if norms else None)


__all__ = ["OnnxRunner", "Runner", "TorchRunner", "onnx_fixed_batch", "run_batched"]
