"""A thin ONNX Runtime layer: provider choice and options, thread settings, session creation.

Providers are picked TensorRT → CUDA → CPU from what the installed onnxruntime
offers, unless the caller (or ``FACEMATCH_PROVIDERS``, comma-separated) says otherwise.
ONNX Runtime silently falls back to CPU when a provider's libraries cannot load, so
every session is checked after creation (:func:`check_providers`): a provider asked for
explicitly that is not running raises :class:`ProviderUnavailableError`; with the default
preference a WARNING is logged once per model. ``torch-cuda`` / ``torch-cpu`` name the
PyTorch embedder runtime (:mod:`facematch.zoo.torch_embedder`), not ONNX Runtime providers.

Provider options come from the environment (docs/gpu.md):

=================================  =============================================  ==========================
variable                           meaning                                        default
=================================  =============================================  ==========================
``FACEMATCH_TRT_CACHE_DIR``        TensorRT engine + timing cache directory       ``~/.cache/facematch/trt``
``FACEMATCH_TRT_FP16``             let TensorRT pick fp16 kernels                 ``1``
``FACEMATCH_TRT_WORKSPACE_GIB``    TensorRT builder workspace                     ``2``
``FACEMATCH_TRT_DET_MAX_SIDE``     largest detector input side in the profile     the card's ``max_input``
``FACEMATCH_CUDA_DEVICE``          GPU ordinal for CUDA and TensorRT              ``0``
``FACEMATCH_CUDA_CONV_SEARCH``     cuDNN conv algorithm search                    ``HEURISTIC``
=================================  =============================================  ==========================
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import BackendUnavailableError, InvalidArgumentError, ModelError, ProviderUnavailableError

if TYPE_CHECKING:
    from .cards import ModelCard

logger = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
PREFERRED_PROVIDERS = (TENSORRT, CUDA, CPU)
PROVIDER_ALIASES = {"cpu": CPU, "cuda": CUDA, "tensorrt": TENSORRT, "trt": TENSORRT}
TORCH_PROVIDERS = ("torch-cuda", "torch-cpu")  # the PyTorch embedder runtime, not ONNX Runtime
PROVIDERS_ENV = "FACEMATCH_PROVIDERS"
THREADS_ENV = "FACEMATCH_THREADS"
CONV_SEARCHES = ("HEURISTIC", "EXHAUSTIVE", "DEFAULT")


def _ort() -> Any:
    try:
        import onnxruntime as ort
    except ImportError as exc:  # pragma: no cover - depends on the install
        from .extras import missing_module

        raise missing_module("onnxruntime") from exc
    return ort


def available_providers() -> list[str]:
    return list(_ort().get_available_providers())


def requested_providers(requested: Sequence[str] | None = None) -> list[str] | None:
    """The caller's providers, else ``FACEMATCH_PROVIDERS`` (comma-separated), else ``None`` (the default)."""
    if requested is None and os.environ.get(PROVIDERS_ENV):
        requested = [p.strip() for p in os.environ[PROVIDERS_ENV].split(",") if p.strip()]
    return list(requested) if requested else None


def split_torch_providers(requested: Sequence[str] | None = None) -> tuple[str | None, list[str] | None]:
    """``(torch device or None, ONNX Runtime providers or None)`` of a request (or ``FACEMATCH_PROVIDERS``).

    ``["torch-cuda"]`` gives ``("cuda", None)``: the embedder runs on PyTorch, the detector on
    ONNX Runtime's default choice; ``["torch-cuda", "cpu"]`` pins the detector to CPU.
    """
    wanted = requested_providers(requested)
    if wanted is None:
        return None, None
    torch_names = [p for p in wanted if p.lower() in TORCH_PROVIDERS]
    if len(torch_names) > 1:
        raise InvalidArgumentError(f"give one of {TORCH_PROVIDERS}, not {torch_names}")
    rest = [p for p in wanted if p.lower() not in TORCH_PROVIDERS]
    device = torch_names[0].lower().removeprefix("torch-") if torch_names else None
    return device, rest or None


def choose_providers(requested: Sequence[str] | None = None) -> list[str]:
    """Providers to use, in priority order: ``requested`` (or the env var) filtered to what is installed."""
    available = available_providers()
    wanted_raw = requested_providers(requested)
    if wanted_raw:
        torch_names = [p for p in wanted_raw if p.lower() in TORCH_PROVIDERS]
        if torch_names:
            raise InvalidArgumentError(
                f"{torch_names} name the PyTorch embedder runtime, not ONNX Runtime providers "
                "(FaceMatcher(providers=...) routes them; see docs/gpu.md)"
            )
        wanted = [PROVIDER_ALIASES.get(p.lower(), p) for p in wanted_raw]
        missing = [p for p in wanted if p not in available]
        if missing:
            raise BackendUnavailableError(f"execution providers {missing} are not available; installed: {available}")
        return wanted
    return [p for p in PREFERRED_PROVIDERS if p in available] or available


def session_options(threads: int | None = None, *, spin_wait: bool = True) -> Any:
    """ONNX Runtime session options: ``threads`` intra-op threads (``FACEMATCH_THREADS``), and
    ``spin_wait=False`` to stop the intra-op threads busy-waiting for work between runs (they
    otherwise take CPU from other threads of a process that shares the cores, e.g. a server)."""
    ort = _ort()
    opts = ort.SessionOptions()
    if not spin_wait:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
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


# ---- provider options ----------------------------------------------------------------------------
def _env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise InvalidArgumentError(f"{name} must be true or false, not {raw!r}")


def _env_number(name: str, default: float, *, minimum: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise InvalidArgumentError(f"{name} must be a number, not {raw!r}") from None
    if value < minimum:
        raise InvalidArgumentError(f"{name} must be >= {minimum}, not {raw!r}")
    return value


def _default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "facematch" / "trt"


@dataclass(frozen=True)
class ShapeProfile:
    """The input shapes a model will see: TensorRT builds one engine for the whole range.

    ``min``/``opt``/``max`` are full NCHW shapes of the model's one image input.
    """

    input_name: str
    min: tuple[int, int, int, int]
    opt: tuple[int, int, int, int]
    max: tuple[int, int, int, int]

    def option(self, which: str) -> str:
        shape = getattr(self, which)
        return f"{self.input_name}:{'x'.join(str(int(d)) for d in shape)}"


@dataclass(frozen=True)
class RuntimeOptions:
    """GPU provider settings, from ``FACEMATCH_TRT_*`` / ``FACEMATCH_CUDA_*`` (see the module docstring)."""

    trt_cache_dir: Path
    trt_fp16: bool = True
    trt_workspace_gib: float = 2.0
    det_max_side: int | None = None
    cuda_device: int = 0
    conv_search: str = "HEURISTIC"

    @classmethod
    def from_env(cls) -> RuntimeOptions:
        cache = os.environ.get("FACEMATCH_TRT_CACHE_DIR")
        conv = (os.environ.get("FACEMATCH_CUDA_CONV_SEARCH") or "HEURISTIC").strip().upper()
        if conv not in CONV_SEARCHES:
            raise InvalidArgumentError(f"FACEMATCH_CUDA_CONV_SEARCH must be one of {CONV_SEARCHES}, not {conv!r}")
        det = os.environ.get("FACEMATCH_TRT_DET_MAX_SIDE")
        return cls(
            trt_cache_dir=Path(cache).expanduser() if cache else _default_cache_dir(),
            trt_fp16=_env_bool("FACEMATCH_TRT_FP16", True),
            trt_workspace_gib=_env_number("FACEMATCH_TRT_WORKSPACE_GIB", 2.0, minimum=0.25),
            det_max_side=int(_env_number("FACEMATCH_TRT_DET_MAX_SIDE", 0, minimum=32)) if det else None,
            cuda_device=int(_env_number("FACEMATCH_CUDA_DEVICE", 0, minimum=0)),
            conv_search=conv,
        )


def shape_profile(
    card: ModelCard, input_name: str, *, max_batch: int = 32, options: RuntimeOptions | None = None
) -> ShapeProfile | None:
    """The shape range of a card's model: detectors 1×3×(multiple..max side)², embedders batch 1..``max_batch``."""
    opts = options or RuntimeOptions.from_env()
    if card.task == "detection" and card.detection is not None:
        spec = card.detection
        side = max(spec.input_multiple, opts.det_max_side or spec.max_input)
        side = -(-side // spec.input_multiple) * spec.input_multiple
        small = spec.input_multiple
        return ShapeProfile(input_name, (1, 3, small, small), (1, 3, side, side), (1, 3, side, side))
    if card.input.size is None:
        return None
    w, h = card.input.size
    top = max(1, int(max_batch)) if card.input.dynamic_batch else 1
    return ShapeProfile(input_name, (1, 3, h, w), (top, 3, h, w), (top, 3, h, w))


def provider_options(
    providers: Sequence[str], profile: ShapeProfile | None = None, options: RuntimeOptions | None = None
) -> list[dict[str, str]]:
    """The options dict of each provider (same order), as ONNX Runtime's ``provider_options`` takes them.

    TensorRT: engine and timing caches under ``trt_cache_dir`` (so a shape is built once per machine,
    not once per process), fp16, the workspace, and the shape profile (so inputs in the range never
    rebuild the engine). CUDA: the device and ``cudnn_conv_algo_search`` (HEURISTIC: no benchmarking
    of every new input shape, which stalls the first request at each detector size).
    """
    opts = options or RuntimeOptions.from_env()
    out: list[dict[str, str]] = []
    for name in providers:
        if name == TENSORRT:
            trt = {
                "device_id": str(opts.cuda_device),
                "trt_fp16_enable": "True" if opts.trt_fp16 else "False",
                "trt_max_workspace_size": str(int(opts.trt_workspace_gib * (1 << 30))),
                "trt_engine_cache_enable": "True",
                "trt_engine_cache_path": str(opts.trt_cache_dir),
                "trt_timing_cache_enable": "True",
                "trt_timing_cache_path": str(opts.trt_cache_dir),
            }
            if profile is not None:
                trt.update(
                    trt_profile_min_shapes=profile.option("min"),
                    trt_profile_opt_shapes=profile.option("opt"),
                    trt_profile_max_shapes=profile.option("max"),
                )
            out.append(trt)
        elif name == CUDA:
            out.append({"device_id": str(opts.cuda_device), "cudnn_conv_algo_search": opts.conv_search})
        else:
            out.append({})
    return out


# ---- CUDA libraries from pip wheels --------------------------------------------------------------
_preload_lock = threading.Lock()
_preloaded = False


def preload_cuda_libraries(ort: Any, providers: Sequence[str]) -> None:
    """Load the pip-installed CUDA/cuDNN (``onnxruntime-gpu[cuda,cudnn]``) and TensorRT libraries once.

    ``onnxruntime.preload_dlls`` (1.21+) loads the ``nvidia-*-cu12`` wheels' libraries, which are
    not on the loader path; ``tensorrt_libs`` (the ``tensorrt-cu12-libs`` wheel) holds
    ``libnvinfer.so.10`` for the TensorRT provider. Without them the providers fail to load and
    ONNX Runtime runs on CPU. Libraries the system already provides are found either way.
    """
    global _preloaded
    if not any(p in (CUDA, TENSORRT) for p in providers):
        return
    with _preload_lock:
        if _preloaded:
            return
        _preloaded = True
        preload = getattr(ort, "preload_dlls", None)
        if callable(preload):
            try:
                preload(cuda=True, cudnn=True, msvc=False)
            except Exception as exc:  # a missing wheel is reported by the provider check afterwards
                logger.warning("onnxruntime.preload_dlls failed: %s", exc)
        if TENSORRT in providers:
            _preload_tensorrt()


def _preload_tensorrt() -> None:
    import ctypes
    import importlib.util

    spec = importlib.util.find_spec("tensorrt_libs")
    if spec is None or not spec.submodule_search_locations:
        return
    libdir = Path(next(iter(spec.submodule_search_locations)))
    for lib in ("libnvinfer.so.10", "libnvinfer_plugin.so.10", "libnvonnxparser.so.10"):
        path = libdir / lib
        if path.is_file():
            try:
                ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
            except OSError as exc:
                logger.warning("cannot load %s: %s", path, exc)


# ---- provider truth ------------------------------------------------------------------------------
_warned: set[tuple[str, tuple[str, ...]]] = set()
_warned_lock = threading.Lock()


def check_providers(session: Any, requested: Sequence[str], *, explicit: bool, label: str) -> list[str]:
    """The providers ``session`` really runs; raise or warn when one that was requested is not among them.

    ``explicit`` (``providers=`` or ``FACEMATCH_PROVIDERS``): :class:`ProviderUnavailableError`.
    Otherwise (the default TensorRT → CUDA → CPU preference) a WARNING, once per model.
    """
    active = list(session.get_providers())
    missing = [p for p in requested if p not in active]
    if not missing:
        return active
    message = (
        f"{label}: ONNX Runtime runs {active}, not the requested {list(requested)}: {missing} failed to load "
        "(its CUDA/cuDNN/TensorRT libraries are missing or of another major version; see docs/gpu.md)"
    )
    if explicit:
        raise ProviderUnavailableError(message, requested=list(requested), active=active)
    key = (label, tuple(missing))
    with _warned_lock:
        first = key not in _warned
        _warned.add(key)
    if first:
        logger.warning("%s; serving on %s", message, active[0] if active else "nothing")
    return active


def active_providers(wrapper: Any) -> list[str]:
    """What a model wrapper runs on: its ``providers`` attribute, else its ONNX Runtime session's."""
    providers = getattr(wrapper, "providers", None)
    if providers is not None:
        return list(providers)
    session = getattr(wrapper, "session", None)
    return list(session.get_providers()) if session is not None else []


def _input_name(data: str | bytes) -> str:
    import onnx

    model = onnx.load_from_string(data) if isinstance(data, bytes) else onnx.load(data, load_external_data=False)
    return str(model.graph.input[0].name)


def create_session(
    model: str | os.PathLike[str] | bytes,
    *,
    providers: Sequence[str] | None = None,
    threads: int | None = None,
    dynamic_batch: bool = False,
    card: ModelCard | None = None,
    max_batch: int = 32,
    sha256: str | None = None,
    spin_wait: bool = True,
) -> Any:
    """Create an ``onnxruntime.InferenceSession`` for a model path or serialized bytes.

    The providers it really runs are checked against the request (:func:`check_providers`).
    With TensorRT among them, ``card`` (and ``max_batch`` for embedders) give it the input
    shape range (:func:`shape_profile`), so no input in that range rebuilds the engine.
    ``dynamic_batch`` declares a symbolic batch dimension (:func:`batch_dynamic_model`, cached
    per model file; ``sha256`` is the file's hash when the caller has verified it already).
    ``threads`` and ``spin_wait``: :func:`session_options`.
    """
    ort = _ort()
    data: str | bytes
    if isinstance(model, (bytes, bytearray)):
        data = bytes(model)
        label = "model bytes"
    else:
        data = str(Path(model))
        label = Path(model).name
    if dynamic_batch:
        data = make_batch_dynamic(data) if isinstance(data, bytes) else batch_dynamic_model(data, sha256)
    explicit = requested_providers(providers) is not None
    chosen = choose_providers(providers)
    preload_cuda_libraries(ort, chosen)
    runtime_options = RuntimeOptions.from_env()
    profile = None
    if TENSORRT in chosen:
        runtime_options.trt_cache_dir.mkdir(parents=True, exist_ok=True)
        if card is not None:
            profile = shape_profile(card, _input_name(data), max_batch=max_batch, options=runtime_options)
    options = provider_options(chosen, profile, runtime_options)
    try:
        sess = ort.InferenceSession(
            data, sess_options=session_options(threads, spin_wait=spin_wait), providers=chosen, provider_options=options
        )
    except Exception as exc:
        raise ModelError(f"onnxruntime cannot load model: {exc}") from exc
    active = check_providers(sess, chosen, explicit=explicit, label=label)
    logger.info("%s: session on %s", label, active)
    return sess


__all__ = [
    "BATCH_REWRITE_VERSION",
    "PREFERRED_PROVIDERS",
    "TORCH_PROVIDERS",
    "RuntimeOptions",
    "ShapeProfile",
    "active_providers",
    "available_providers",
    "batch_dynamic_model",
    "batch_model_cache_dir",
    "check_providers",
    "choose_providers",
    "create_session",
    "make_batch_dynamic",
    "preload_cuda_libraries",
    "provider_options",
    "requested_providers",
    "shape_profile",
    "split_torch_providers",
]
