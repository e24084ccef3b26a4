"""``export trt``: a TensorRT engine built from an ONNX model through the ``tensorrt`` Python API.

- one optimisation profile (min/opt/max batch) on the input;
- fp16 (``BuilderFlag.FP16``), or int8 with an entropy calibrator (``IInt8EntropyCalibrator2``)
  over a folder of aligned faces, fed in batches of the profile's opt batch (fp16 kernels
  allowed as fallback);
- a timing cache file, loaded when present and saved after the build;
- the engine file holds exactly ``build_serialized_network``'s bytes (no custom header); its card
  is the sidecar ``<stem>.card.json``;
- the engine is run with the TensorRT runtime and compared with the source ONNX (CPU ONNX Runtime).

It needs ``tensorrt``, an NVIDIA GPU, and a CUDA build of torch (device buffers); without them it
fails with :class:`~facematch.errors.BackendUnavailableError` before doing anything.

TensorRT versions (:func:`trt_api`): **10.x** builds fp32, fp16 and int8. **11.x** removed
``platform_has_fast_fp16/int8``, ``BuilderFlag.FP16/INT8``, ``int8_calibrator`` and
``set_calibration_profile`` (weakly typed precision flags and implicit calibration are gone), so
on 11.x only ``--precision fp32`` is built and fp16/int8 are refused with that reason; anything
older than 10 or newer than 11 is refused. The engine is for TensorRT runtimes (Triton,
``trtexec``, DeepStream, :class:`TrtRunner`); facematch itself serves ONNX models, with
TensorRT through ONNX Runtime's TensorRT provider and its engine cache (docs/gpu.md).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from facematch.cards import InputSpec, ModelCard
from facematch.errors import BackendUnavailableError, InvalidArgumentError, ModelError
from facematch.preprocess import to_blob

from .card import card_id_for, derived_card, library_versions, source_card, tool_version, write_sidecar
from .faces import FaceSet, load_faces
from .formats import check_source_precision, check_trt_options
from .onnx_export import ExportResult
from .onnx_utils import declared_batch, fix_declared_batch, has_dynamic_batch, load_onnx
from .runners import OnnxRunner
from .validate import ExportValidationError, compare

logger = logging.getLogger(__name__)


def require_tensorrt() -> tuple[Any, Any]:
    """``(tensorrt, torch)`` when TensorRT, a CUDA build of torch and a GPU are all present; else a clear error."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BackendUnavailableError(
            "TensorRT is not installed: `export trt` needs the tensorrt Python package and an NVIDIA GPU "
            "(pip install tensorrt on a CUDA machine)"
        ) from exc
    try:
        import torch
    except ImportError as exc:
        raise BackendUnavailableError("export trt needs torch (CUDA build) for device buffers") from exc
    if not torch.cuda.is_available():
        raise BackendUnavailableError("no CUDA GPU is visible: TensorRT engines can only be built and checked on one")
    return trt, torch


SUPPORTED_MAJORS = (10, 11)


def _major(trt: Any) -> int:
    return int(str(trt.__version__).split(".")[0])


@dataclass(frozen=True)
class TrtApi:
    """What the installed TensorRT's Python API offers (see the module docstring)."""

    version: str
    major: int
    precisions: tuple[str, ...]  # what this facematch builds with it

    def check_precision(self, precision: str) -> None:
        if precision in self.precisions:
            return
        raise BackendUnavailableError(
            f"TensorRT {self.version} cannot build --precision {precision}: TensorRT 11 removed "
            "BuilderFlag.FP16/INT8, int8_calibrator and set_calibration_profile. Build --precision fp32 "
            "with it, or install TensorRT 10.x (pip install 'tensorrt-cu12>=10,<11') for fp16/int8"
        )


def trt_api(trt: Any) -> TrtApi:
    """The API branch of a ``tensorrt`` module: 10.x (fp32/fp16/int8) or 11.x (fp32); other majors refused."""
    version = str(getattr(trt, "__version__", "?"))
    try:
        major = _major(trt)
    except ValueError:
        raise BackendUnavailableError(f"cannot read the TensorRT version {version!r}") from None
    if major not in SUPPORTED_MAJORS:
        raise BackendUnavailableError(
            f"TensorRT {version} is not supported: export trt is written for TensorRT 10.x and 11.x "
            "(pip install 'tensorrt-cu12>=10,<12')"
        )
    flags = getattr(trt, "BuilderFlag", None)
    fp16 = hasattr(flags, "FP16")
    int8 = fp16 and hasattr(flags, "INT8") and hasattr(trt, "IInt8EntropyCalibrator2")
    if major == 10 and not (fp16 and int8):
        raise BackendUnavailableError(f"TensorRT {version} lacks BuilderFlag.FP16/INT8; is the install complete?")
    precisions = ("fp32", "fp16", "int8") if major == 10 else ("fp32",)
    return TrtApi(version, major, precisions)


def batch_plan(n: int, lo: int, hi: int) -> Iterator[tuple[int, int, int]]:
    """``(start, stop, run_batch)`` chunks covering ``n`` rows inside an engine profile ``[lo, hi]``.

    Chunks are at most ``hi`` rows; one smaller than ``lo`` is padded up to ``lo``.
    """
    for start in range(0, n, hi):
        stop = min(n, start + hi)
        yield start, stop, max(stop - start, lo)


class TrtRunner:
    """Runs a serialized engine on the GPU (input/output as host float32 arrays), any batch size.

    A batch outside the engine's profile is split into chunks of at most its max batch, and a
    chunk below its min batch is padded, so validation at batch 1, 7 and 32 works on a narrow
    profile (``--max-batch 8``). ``fixed_batch`` is the profile's batch when min == max.
    """

    def __init__(
        self, engine_bytes: bytes, card: ModelCard, *, modules: tuple[Any, Any] | None = None, device: str = "cuda"
    ) -> None:
        trt, torch = modules or require_tensorrt()
        self._torch = torch
        self._device = device
        self.spec: InputSpec = card.input
        self.name = card.id
        self.norm_index = card.embedding.norm_output_index if card.embedding else None
        self._logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(self._logger).deserialize_cuda_engine(engine_bytes)
        if self.engine is None:
            raise ModelError("TensorRT could not deserialize the engine")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        lo, _opt, hi = self.engine.get_tensor_profile_shape(self.inputs[0], 0)
        self.min_batch, self.max_batch = int(lo[0]), int(hi[0])
        self.fixed_batch: int | None = self.min_batch if self.min_batch == self.max_batch else None

    def run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        embs, norms = [], []
        for start, stop, size in batch_plan(len(x), self.min_batch, self.max_batch):
            chunk = np.ascontiguousarray(x[start:stop], np.float32)
            if size > len(chunk):
                chunk = np.concatenate([chunk, np.zeros((size - len(chunk), *chunk.shape[1:]), np.float32)])
            emb, norm = self._run_chunk(chunk)
            embs.append(emb[: stop - start])
            if norm is not None:
                norms.append(norm[: stop - start])
        return np.concatenate(embs), (np.concatenate(norms) if norms else None)

    def _run_chunk(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        torch = self._torch
        inp = torch.from_numpy(x).to(self._device)
        if not self.context.set_input_shape(self.inputs[0], tuple(inp.shape)):
            raise ModelError(
                f"TensorRT refused input shape {tuple(inp.shape)}: the engine's profile takes batch "
                f"{self.min_batch}..{self.max_batch}"
            )
        self.context.set_tensor_address(self.inputs[0], inp.data_ptr())
        outs = []
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            buf = torch.empty(shape, dtype=torch.float32, device=self._device)
            self.context.set_tensor_address(name, buf.data_ptr())
            outs.append(buf)
        stream = torch.cuda.current_stream() if self._device == "cuda" else None
        if not self.context.execute_async_v3(stream.cuda_stream if stream is not None else 0):
            raise ModelError("TensorRT execution failed")
        if stream is not None:
            stream.synchronize()
        emb = outs[0].cpu().numpy().reshape(len(x), -1)
        norm = outs[self.norm_index].cpu().numpy().reshape(-1) if self.norm_index is not None else None
        return emb, norm


def _calibrator(trt: Any, torch: Any, batches: list[np.ndarray], cache: Path | None) -> Any:
    """An entropy calibrator feeding ``batches`` (preprocessed float32) from one device buffer."""

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__()
            self._batches = iter(batches)
            self._size = len(batches[0])
            self.count = sum(len(b) for b in batches)
            self._device = torch.empty(batches[0].shape, dtype=torch.float32, device="cuda")

        def get_batch_size(self) -> int:
            return self._size

        def get_batch(self, names: list[str]) -> list[int] | None:
            x = next(self._batches, None)
            if x is None:
                return None
            self._device.copy_(torch.from_numpy(x))
            return [int(self._device.data_ptr())]

        def read_calibration_cache(self) -> bytes | None:
            return cache.read_bytes() if cache is not None and cache.is_file() else None

        def write_calibration_cache(self, data: Any) -> None:
            if cache is not None:
                cache.write_bytes(bytes(data))

    return EntropyCalibrator()


def check_platform(builder: Any, precision: str) -> None:
    """Refuse fp16/int8 on a GPU without fast kernels for them (10.x; 11.x has no such query and no such builds)."""
    if precision == "fp16" and not getattr(builder, "platform_has_fast_fp16", True):
        raise InvalidArgumentError("this GPU has no fast fp16; refusing to build an fp16 engine (use --precision fp32)")
    if precision == "int8" and not getattr(builder, "platform_has_fast_int8", True):
        raise InvalidArgumentError("this GPU has no fast int8; refusing to build an int8 engine")


def calibration_batches(x: np.ndarray, opt_batch: int) -> list[np.ndarray]:
    """Full batches of the profile's opt batch (what TensorRT calibrates the calibration profile at)."""
    batches = [x[i : i + opt_batch] for i in range(0, len(x) - opt_batch + 1, opt_batch)]
    if not batches:
        raise InvalidArgumentError(
            f"int8 calibration runs at the profile's opt batch ({opt_batch}): need at least {opt_batch} "
            f"calibration faces, found {len(x)} (lower --opt-batch or add faces)"
        )
    return batches


def configure_builder(
    trt: Any,
    builder: Any,
    network: Any,
    *,
    precision: str,
    shape: tuple[int, int, int],
    batches: tuple[int, int, int],
    workspace_gib: float,
    calibrator: Any = None,
) -> tuple[Any, dict[str, Any] | None]:
    """The builder config: workspace, one batch profile, precision flags, int8 calibration (10.x API).

    Returns the config and the calibration record for the card (``None`` unless int8).
    """
    api = trt_api(trt)
    api.check_precision(precision)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    inp = network.get_input(0)
    lo, opt, hi = batches
    profile = builder.create_optimization_profile()
    profile.set_shape(inp.name, (lo, *shape), (opt, *shape), (hi, *shape))
    config.add_optimization_profile(profile)
    if precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
    if precision != "int8":
        return config, None
    if calibrator is None or calibrator.get_batch_size() != opt:
        raise InvalidArgumentError(f"int8 calibration must feed batches of the profile's opt batch ({opt})")
    config.set_flag(trt.BuilderFlag.INT8)
    config.int8_calibrator = calibrator
    config.set_calibration_profile(profile)
    used = {"count": calibrator.count, "batch": opt, "calibrator": "IInt8EntropyCalibrator2"}
    return config, used


def build_engine(
    src: str | Path,
    out: str | Path,
    *,
    precision: str = "fp16",
    min_batch: int = 1,
    opt_batch: int = 32,
    max_batch: int = 256,
    calib_dir: str | Path | None = None,
    calib_count: int = 512,
    timing_cache: str | Path | None = None,
    workspace_gib: float = 4.0,
    faces: FaceSet | None = None,
    force: bool = False,
    card: str | None = None,
    card_id: str | None = None,
) -> ExportResult:
    """Build a TensorRT engine for ``src`` at ``out`` (``.engine``), check it, write its sidecar card."""
    src, out = Path(src), Path(out)
    if out.suffix not in (".engine", ".plan", ".trt"):
        raise InvalidArgumentError(f"engine path must end with .engine, .plan or .trt, got {out.name}")
    base = source_card(src, card)
    check_source_precision("trt", base.precision)
    model = fix_declared_batch(load_onnx(src))
    check_trt_options(
        precision=precision,
        min_batch=min_batch,
        opt_batch=opt_batch,
        max_batch=max_batch,
        calib=str(calib_dir) if calib_dir else None,
        source_batch=None if has_dynamic_batch(model) else declared_batch(model),
    )
    trt, torch = require_tensorrt()
    api = trt_api(trt)
    api.check_precision(precision)
    log = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(log)
    check_platform(builder, precision)
    network = builder.create_network(0)  # explicit batch is the only mode in 10.x and 11.x
    parser = trt.OnnxParser(network, log)
    if not parser.parse(model.SerializeToString()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ModelError(f"TensorRT cannot parse {src.name}: {errors}")
    w, h = base.input.size or (112, 112)
    batches = None
    if precision == "int8":
        assert calib_dir is not None
        calib = load_faces(calib_dir, (w, h), limit=calib_count)
        x = to_blob(calib.crops, base.input, (w, h)).astype(np.float32, copy=False)  # the calibrator's buffer
        batches = calibration_batches(x, opt_batch)
    config, calib_used = configure_builder(
        trt,
        builder,
        network,
        precision=precision,
        shape=(3, h, w),
        batches=(min_batch, opt_batch, max_batch),
        workspace_gib=workspace_gib,
        calibrator=_calibrator(trt, torch, batches, out.with_suffix(".calib.cache")) if batches else None,
    )
    if calib_used is not None:
        calib_used["dir"] = str(calib_dir)
    cache_path = Path(timing_cache) if timing_cache else out.with_suffix(".timing.cache")
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ModelError("TensorRT failed to build the engine (see the TensorRT log above)")
    engine_bytes = bytes(serialized)
    cache_path.write_bytes(bytes(config.get_timing_cache().serialize()))
    options = {
        "source": src.name,
        "source_sha256": base.sha256,
        "precision": precision,
        "profile": {"min": min_batch, "opt": opt_batch, "max": max_batch},
        "calibration": calib_used,
        "timing_cache": str(cache_path),
        "workspace_gib": workspace_gib,
        "gpu": torch.cuda.get_device_name(0),
        "tensorrt": str(trt.__version__),
    }
    new = derived_card(
        base,
        id=card_id or card_id_for(out),
        file=out.name,
        precision=precision,
        input=base.input.model_copy(update={"dynamic_batch": max_batch > 1}),
        description=f"TensorRT {trt.__version__} engine ({precision}) of {base.id}. " + base.description,
        export={"tool": tool_version(), "libraries": library_versions(), "command": "trt", "options": options},
    )
    report = compare(
        OnnxRunner(model.SerializeToString(), base),
        TrtRunner(engine_bytes, new),
        precision=precision,
        faces=faces,
        random_gating=precision != "int8",
    )
    if not report.passed and not force:
        raise ExportValidationError(f"TensorRT engine is not close enough to {src.name}: {report.summary()}")
    new = new.model_copy(update={"export": {**(new.export or {}), "validation": report.to_dict()}})
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(engine_bytes)
    tmp.replace(out)
    written = write_sidecar(new, out)
    return ExportResult(out, written, report)


__all__ = [
    "SUPPORTED_MAJORS",
    "TrtApi",
    "TrtRunner",
    "batch_plan",
    "build_engine",
    "calibration_batches",
    "configure_builder",
    "require_tensorrt",
    "trt_api",
]
