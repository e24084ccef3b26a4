"""``export trt``: a TensorRT engine built from an ONNX model through the ``tensorrt`` Python API.

- one optimisation profile (min/opt/max batch) on the input;
- fp16 (``BuilderFlag.FP16``), or int8 with an entropy calibrator (``IInt8EntropyCalibrator2``)
  over a folder of aligned faces (fp16 kernels allowed as fallback);
- a timing cache file, loaded when present and saved after the build;
- the engine file holds exactly ``build_serialized_network``'s bytes (no custom header); its card
  is the sidecar ``<stem>.card.json``;
- the engine is run with the TensorRT runtime and compared with the source ONNX (CPU ONNX Runtime).

It needs ``tensorrt``, an NVIDIA GPU, and a CUDA build of torch (device buffers); without them it
fails with :class:`~facematch.errors.BackendUnavailableError` before doing anything.
"""

from __future__ import annotations

import logging
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


def _major(trt: Any) -> int:
    return int(str(trt.__version__).split(".")[0])


class TrtRunner:
    """Runs a serialized engine on the GPU (input/output as host float32 arrays)."""

    def __init__(self, engine_bytes: bytes, card: ModelCard) -> None:
        trt, torch = require_tensorrt()
        self._torch = torch
        self.spec: InputSpec = card.input
        self.name = card.id
        self.fixed_batch: int | None = None
        self.norm_index = card.embedding.norm_output_index if card.embedding else None
        self._logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(self._logger).deserialize_cuda_engine(engine_bytes)
        if self.engine is None:
            raise ModelError("TensorRT could not deserialize the engine")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]

    def run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        torch = self._torch
        inp = torch.from_numpy(np.ascontiguousarray(x, np.float32)).cuda()
        self.context.set_input_shape(self.inputs[0], tuple(inp.shape))
        self.context.set_tensor_address(self.inputs[0], inp.data_ptr())
        outs = []
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            buf = torch.empty(shape, dtype=torch.float32, device="cuda")
            self.context.set_tensor_address(name, buf.data_ptr())
            outs.append(buf)
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise ModelError("TensorRT execution failed")
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
    log = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(log)
    if precision == "fp16" and not builder.platform_has_fast_fp16:
        raise InvalidArgumentError("this GPU has no fast fp16; refusing to build an fp16 engine (use --precision fp32)")
    if precision == "int8" and not builder.platform_has_fast_int8:
        raise InvalidArgumentError("this GPU has no fast int8; refusing to build an int8 engine")
    flags = 0 if _major(trt) >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, log)
    if not parser.parse(model.SerializeToString()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ModelError(f"TensorRT cannot parse {src.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    inp = network.get_input(0)
    w, h = base.input.size or (112, 112)
    profile = builder.create_optimization_profile()
    profile.set_shape(inp.name, (min_batch, 3, h, w), (opt_batch, 3, h, w), (max_batch, 3, h, w))
    config.add_optimization_profile(profile)
    if precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
    calib_used = None
    if precision == "int8":
        assert calib_dir is not None
        calib = load_faces(calib_dir, (w, h), limit=calib_count)
        x = to_blob(calib.crops, base.input, (w, h)).astype(np.float32, copy=False)  # the calibrator's buffer
        step = min(opt_batch, 32)
        batches = [x[i : i + step] for i in range(0, len(x) - step + 1, step)]
        if not batches:
            raise InvalidArgumentError(f"need at least {step} calibration faces, found {len(x)}")
        config.set_flag(trt.BuilderFlag.INT8)
        config.int8_calibrator = _calibrator(trt, torch, batches, out.with_suffix(".calib.cache"))
        config.set_calibration_profile(profile)
        calib_used = {"dir": str(calib_dir), "count": len(batches) * step, "calibrator": "IInt8EntropyCalibrator2"}
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


__all__ = ["TrtRunner", "build_engine", "require_tensorrt"]
