"""``export quantize``: ONNX Runtime static int8 (QDQ, per-channel weights) calibrated on aligned faces.

A naive quantisation of every node collapses face embeddings. By default (``keep_float="sensitive"``)
these nodes stay in float: the first and last convolutions, ``Gemm``/``MatMul`` (the embedding
layer), ``BatchNormalization`` that could not be folded, depthwise convolutions (``group > 1``),
and *linear projections* (convolutions whose output feeds no ReLU/PReLU, i.e. the residual stream).
PReLU and Add are never quantized by ONNX Runtime's QDQ quantizer. Activation ranges come from a
histogram percentile (99.999 by default), which clips rare outliers that MinMax keeps.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from facematch.errors import BackendUnavailableError, InvalidArgumentError
from facematch.preprocess import to_blob

from .card import derived_card, library_versions, load_float32_source, tool_version, write_onnx_with_card
from .faces import FaceSet, load_faces
from .formats import QDQ_PER_CHANNEL_MIN_OPSET
from .onnx_export import ExportResult
from .onnx_utils import convert_opset, default_opset, fix_declared_batch
from .runners import OnnxRunner
from .validate import ExportValidationError, compare

logger = logging.getLogger(__name__)

METHODS = ("percentile", "minmax", "entropy")
KEEP_FLOAT = ("sensitive", "none")
ACTIVATIONS = {"Relu", "PRelu", "LeakyRelu", "Clip", "Sigmoid"}


def sensitive_nodes(model: Any) -> list[str]:
    """Names of the nodes the ``sensitive`` policy keeps in float (see the module docstring)."""
    nodes = list(model.graph.node)
    consumers: dict[str, list[str]] = {}
    for n in nodes:
        for i in n.input:
            consumers.setdefault(i, []).append(n.op_type)
    convs = [n for n in nodes if n.op_type == "Conv"]
    keep: list[str] = []
    for idx, n in enumerate(convs):
        group = next((a.i for a in n.attribute if a.name == "group"), 1)
        feeds_act = any(c in ACTIVATIONS for c in consumers.get(n.output[0], []))
        if idx in (0, len(convs) - 1) or group > 1 or not feeds_act:
            keep.append(n.name)
    keep += [n.name for n in nodes if n.op_type in ("Gemm", "MatMul", "BatchNormalization")]
    return keep


def _reader(batches: list[np.ndarray], input_name: str) -> Any:
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            x = next(self._it, None)
            return None if x is None else {input_name: x}

    return Reader()


def quantize_int8(
    src: str | Path,
    out: str | Path,
    calib_dir: str | Path,
    *,
    calib_count: int = 200,
    method: str = "percentile",
    percentile: float = 99.999,
    keep_float: str = "sensitive",
    faces: FaceSet | None = None,
    force: bool = False,
    card: str | None = None,
    card_id: str | None = None,
) -> ExportResult:
    """Quantise the fp32 ONNX model ``src`` to int8 at ``out``, calibrated on ``calib_count`` faces of ``calib_dir``.

    The result is compared with ``src`` on ``faces`` (files used for calibration are left out) and
    random inputs; below min cosine 0.99 it raises :class:`ExportValidationError` unless ``force``.
    """
    try:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise BackendUnavailableError("onnxruntime (with its quantization tools) is needed for int8") from exc
    import onnx

    from .card import card_id_for

    src, out = Path(src), Path(out)
    if method not in METHODS:
        raise InvalidArgumentError(f"--method must be one of {METHODS}, got {method!r}")
    if keep_float not in KEEP_FLOAT:
        raise InvalidArgumentError(f"--keep-float must be one of {KEEP_FLOAT}, got {keep_float!r}")
    if not 99.0 <= percentile < 100.0:
        raise InvalidArgumentError(f"--percentile must be in [99, 100), got {percentile}")
    if calib_count < 16:
        raise InvalidArgumentError(f"--calib-count must be >= 16 faces, got {calib_count}")
    if out.suffix != ".onnx":
        raise InvalidArgumentError(f"output must end with .onnx, got {out.name}")
    base, model = load_float32_source(src, card, "int8")
    model = convert_opset(model, QDQ_PER_CHANNEL_MIN_OPSET)
    opset = default_opset(model)
    size = base.input.size or (112, 112)
    calib = load_faces(calib_dir, size, limit=calib_count)
    fp32_bytes = model.SerializeToString()
    ref = OnnxRunner(fp32_bytes, base)
    step = ref.fixed_batch or 8
    x = to_blob(calib.crops, base.input, size)
    batches = (
        [x[i : i + step] for i in range(0, len(x) - step + 1, step)]
        if ref.fixed_batch
        else [x[i : i + step] for i in range(0, len(x), step)]
    )
    with tempfile.TemporaryDirectory(prefix="facematch-int8-") as tmp:
        f32, pre, q = Path(tmp, "f32.onnx"), Path(tmp, "pre.onnx"), Path(tmp, "int8.onnx")
        f32.write_bytes(fp32_bytes)
        quant_pre_process(str(f32), str(pre))
        pre_model = onnx.load(str(pre))
        exclude = sensitive_nodes(pre_model) if keep_float == "sensitive" else []
        cm = {
            "percentile": CalibrationMethod.Percentile,
            "minmax": CalibrationMethod.MinMax,
            "entropy": CalibrationMethod.Entropy,
        }[method]
        extra: dict[str, Any] = {"CalibPercentile": percentile} if method == "percentile" else {}
        chatter = io.StringIO()  # the ORT calibrator print()s progress; keep stdout for --json
        with contextlib.redirect_stdout(chatter):
            quantize_static(
                str(pre),
                str(q),
                _reader(batches, pre_model.graph.input[0].name),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=cm,
                nodes_to_exclude=exclude,
                extra_options=extra,
            )
        for line in chatter.getvalue().splitlines():
            logger.debug("onnxruntime quantization: %s", line)
        qmodel = fix_declared_batch(onnx.load(str(q)))
    n_conv = sum(n.op_type == "Conv" for n in pre_model.graph.node)
    n_quant = sum(n.op_type == "Conv" and n.name not in set(exclude) for n in pre_model.graph.node)
    if faces is not None:
        used = {p.resolve() for p in calib.paths}
        keep = [i for i, p in enumerate(faces.paths) if p.resolve() not in used]
        faces = faces.subset(keep) if keep else None
    options = {
        "source": src.name,
        "source_sha256": base.sha256,
        "calib_dir": str(calib_dir),
        "calib_count": len(calib),
        "method": method,
        "percentile": percentile if method == "percentile" else None,
        "format": "QDQ",
        "per_channel": True,
        "activation_type": "uint8",
        "weight_type": "int8",
        "keep_float": keep_float,
        "float_nodes": len(exclude),
        "quantized_convs": f"{n_quant}/{n_conv}",
        "opset": opset,
    }
    new = derived_card(
        base,
        id=card_id or card_id_for(out),
        file=out.name,
        precision="int8",
        opset=opset,
        description=f"int8 (ONNX Runtime QDQ) of {base.id}. " + base.description,
        export={"tool": tool_version(), "libraries": library_versions(), "command": "quantize", "options": options},
    )
    report = compare(
        ref, OnnxRunner(qmodel.SerializeToString(), new), precision="int8", faces=faces, random_gating=False
    )
    if not report.passed and not force:
        raise ExportValidationError(f"int8 model is not close enough to {src.name}: {report.summary()}")
    new = new.model_copy(update={"export": {**(new.export or {}), "validation": report.to_dict()}})
    written = write_onnx_with_card(qmodel, new, out)
    return ExportResult(out, written, report)


__all__ = ["KEEP_FLOAT", "METHODS", "quantize_int8", "sensitive_nodes"]
