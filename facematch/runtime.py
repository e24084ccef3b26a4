"""A thin ONNX Runtime layer: provider choice, thread settings, session creation.

Providers are picked TensorRT → CUDA → CPU from what the installed onnxruntime
offers, unless the caller (or ``FACEMATCH_PROVIDERS``, comma-separated) says otherwise.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import BackendUnavailableError, InvalidArgumentError, ModelError

logger = logging.getLogger(__name__)

PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
PROVIDERS_ENV = "FACEMATCH_PROVIDERS"
THREADS_ENV = "FACEMATCH_THREADS"


def _ort() -> Any:
    try:
        import onnxruntime as ort
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise BackendUnavailableError(
            "onnxruntime is not installed: pip install 'facematch[cpu]' (or 'facematch[gpu]' for onnxruntime-gpu)"
        ) from exc
    return ort


def available_providers() -> list[str]:
    return list(_ort().get_available_providers())


def choose_providers(requested: Sequence[str] | None = None) -> list[str]:
    """Providers to use, in priority order: ``requested`` (or the env var) filtered to what is installed."""
    available = available_providers()
    if requested is None and os.environ.get(PROVIDERS_ENV):
        requested = [p.strip() for p in os.environ[PROVIDERS_ENV].split(",") if p.strip()]
    if requested:
        aliases = {
            "cpu": "CPUExecutionProvider",
            "cuda": "CUDAExecutionProvider",
            "tensorrt": "TensorrtExecutionProvider",
        }
        wanted = [aliases.get(p.lower(), p) for p in requested]
        missing = [p for p in wanted if p not in available]
        if missing:
            raise BackendUnavailableError(f"execution providers {missing} are not available; installed: {available}")
        return wanted
    return [p for p in PREFERRED_PROVIDERS if p in available] or available


def session_options(threads: int | None = None) -> Any:
    ort = _ort()
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads is None and os.environ.get(THREADS_ENV):
        raw = os.environ[THREADS_ENV]
        try:
            threads = int(raw)
        except ValueError:
            raise InvalidArgumentError(f"{THREADS_ENV} must be a whole number of threads, not {raw!r}") from None
    if threads is not None and threads < 0:
        raise InvalidArgumentError(f"threads must be >= 0 (0 lets ONNX Runtime choose), not {threads}")
    if threads:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return opts


def make_batch_dynamic(model_bytes: bytes) -> bytes:
    """Declare the first dimension of every graph input/output as symbolic.

    Some exported models (``w600k_mbf.onnx``) declare a fixed batch of 1 on their
    output and on the intermediate ``value_info`` shapes although the graph computes
    any batch; ONNX Runtime then warns on each batched call and may plan buffers for
    batch 1. The stale intermediate shapes are dropped (ONNX Runtime infers them
    again). Only declared shapes change, never the weights.
    """
    import onnx

    model = onnx.load_from_string(model_bytes)
    changed = len(model.graph.value_info) > 0
    del model.graph.value_info[:]
    for value in list(model.graph.input) + list(model.graph.output):
        dims = value.type.tensor_type.shape.dim
        if len(dims) and (dims[0].HasField("dim_value") or dims[0].dim_param != "batch"):
            dims[0].Clear()
            dims[0].dim_param = "batch"
            changed = True
    return model.SerializeToString() if changed else model_bytes


def create_session(
    model: str | os.PathLike[str] | bytes,
    *,
    providers: Sequence[str] | None = None,
    threads: int | None = None,
    dynamic_batch: bool = False,
) -> Any:
    """Create an ``onnxruntime.InferenceSession`` for a model path or serialized bytes."""
    ort = _ort()
    data: str | bytes
    if isinstance(model, (bytes, bytearray)):
        data = bytes(model)
    else:
        data = str(Path(model))
    if dynamic_batch:
        raw = data if isinstance(data, bytes) else Path(data).read_bytes()
        data = make_batch_dynamic(raw)
    chosen = choose_providers(providers)
    try:
        sess = ort.InferenceSession(data, sess_options=session_options(threads), providers=chosen)
    except Exception as exc:
        raise ModelError(f"onnxruntime cannot load model: {exc}") from exc
    logger.debug("session created with providers %s", sess.get_providers())
    return sess


__all__ = ["PREFERRED_PROVIDERS", "available_providers", "choose_providers", "create_session", "make_batch_dynamic"]
