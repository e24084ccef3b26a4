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
        from .extras import missing_module

        raise missing_module("onnxruntime") from exc
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

    This needs ``onnx`` (about a second to import); :func:`batch_dynamic_model` does it
    once per model file and caches the result.
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


BATCH_REWRITE_VERSION = 1  # bump when make_batch_dynamic changes what it writes


def batch_model_cache_dir() -> Path:
    """Where models rewritten by :func:`make_batch_dynamic` are kept: ``<user cache>/models``."""
    from .paths import user_cache_dir

    return user_cache_dir() / "models"


def batch_dynamic_model(path: str | os.PathLike[str], sha256: str | None = None) -> str | bytes:
    """The model file at ``path`` with a symbolic batch dimension, as ONNX Runtime should load it.

    The rewrite (:func:`make_batch_dynamic`) runs once per model content: its result is cached
    in :func:`batch_model_cache_dir` as ``<sha256>.batch-v<N>.onnx``, written atomically, or
    marked ``<sha256>.batch-v<N>.same`` when the model needs no change. Later loads read the
    cached path and never import ``onnx``. ``sha256`` is the file's (verified) hash; computed
    when not given. Returns a path to load, or the rewritten bytes when the cache cannot be
    written (a read-only home, say).
    """
    src = Path(path)
    if sha256 is None:
        from .model_files import file_sha256

        sha256 = file_sha256(src)
    cache = batch_model_cache_dir()
    stem = f"{sha256}.batch-v{BATCH_REWRITE_VERSION}"
    rewritten, same = cache / f"{stem}.onnx", cache / f"{stem}.same"
    if same.is_file():
        return str(src)
    if rewritten.is_file() and rewritten.stat().st_size > 0:
        return str(rewritten)
    raw = src.read_bytes()
    data = make_batch_dynamic(raw)
    target, payload = (same, b"") if data is raw else (rewritten, data)
    try:
        _write_atomic(target, payload)
    except OSError as exc:
        logger.info("cannot cache the batch-dynamic copy of %s in %s (%s); rewriting it on each load", src, cache, exc)
        return str(src) if data is raw else data
    logger.info("declared a dynamic batch for %s once; cached as %s", src, target)
    return str(src) if data is raw else str(rewritten)


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    try:
        with tmp.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def create_session(
    model: str | os.PathLike[str] | bytes,
    *,
    providers: Sequence[str] | None = None,
    threads: int | None = None,
    dynamic_batch: bool = False,
    sha256: str | None = None,
) -> Any:
    """Create an ``onnxruntime.InferenceSession`` for a model path or serialized bytes.

    ``dynamic_batch`` declares a symbolic batch dimension (:func:`batch_dynamic_model`, cached
    per model file; ``sha256`` is the file's hash when the caller has verified it already).
    """
    ort = _ort()
    data: str | bytes
    if isinstance(model, (bytes, bytearray)):
        data = bytes(model)
    else:
        data = str(Path(model))
    if dynamic_batch:
        data = make_batch_dynamic(data) if isinstance(data, bytes) else batch_dynamic_model(data, sha256)
    chosen = choose_providers(providers)
    try:
        sess = ort.InferenceSession(data, sess_options=session_options(threads), providers=chosen)
    except Exception as exc:
        raise ModelError(f"onnxruntime cannot load model: {exc}") from exc
    logger.debug("session created with providers %s", sess.get_providers())
    return sess


__all__ = [
    "BATCH_REWRITE_VERSION",
    "PREFERRED_PROVIDERS",
    "available_providers",
    "batch_dynamic_model",
    "batch_model_cache_dir",
    "choose_providers",
    "create_session",
    "make_batch_dynamic",
]
