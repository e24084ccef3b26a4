"""Small ONNX graph helpers shared by the converters."""

from __future__ import annotations

import logging
from typing import Any

from facematch.errors import InvalidArgumentError

logger = logging.getLogger(__name__)


def load_onnx(path: Any) -> Any:
    """``onnx.load`` with a facematch error on unreadable files."""
    import onnx

    try:
        return onnx.load(str(path))
    except Exception as exc:
        raise InvalidArgumentError(f"{path} is not a readable ONNX model: {exc}") from exc


def default_opset(model: Any) -> int:
    return next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def has_dynamic_batch(model: Any) -> bool:
    dims = model.graph.input[0].type.tensor_type.shape.dim
    return bool(len(dims)) and not dims[0].HasField("dim_value")


def declared_batch(model: Any) -> int | None:
    """The fixed batch size of the model's first input, ``None`` when it is symbolic."""
    dims = model.graph.input[0].type.tensor_type.shape.dim
    return int(dims[0].dim_value) if len(dims) and dims[0].HasField("dim_value") else None


def fix_declared_batch(model: Any) -> Any:
    """Declare a symbolic batch on every input/output when the input's batch is dynamic.

    ``w600k_mbf.onnx`` declares its output as 1×512 although its batch is dynamic; ONNX Runtime
    then warns on every batched call. Only declared shapes change.
    """
    import onnx

    from facematch.runtime import make_batch_dynamic

    if not has_dynamic_batch(model):
        return model
    return onnx.load_from_string(make_batch_dynamic(model.SerializeToString()))


def convert_opset(model: Any, target: int) -> Any:
    """``model`` converted to opset ``target`` when its opset is lower (declared batch re-fixed after)."""
    import onnx
    from onnx import version_converter

    current = default_opset(model)
    if current >= target:
        return model
    try:
        converted = version_converter.convert_version(model, target)
        onnx.checker.check_model(converted)
    except Exception as exc:
        raise InvalidArgumentError(f"cannot convert the model from opset {current} to {target}: {exc}") from exc
    logger.info("converted opset %d -> %d", current, target)
    return fix_declared_batch(converted)


def is_float32(model: Any) -> bool:
    """True when every floating initializer is float32 (not an fp16 / int8 model already)."""
    import onnx

    types = {i.data_type for i in model.graph.initializer}
    quantized = any(n.op_type in ("QuantizeLinear", "DequantizeLinear", "QLinearConv") for n in model.graph.node)
    return onnx.TensorProto.FLOAT16 not in types and not quantized


__all__ = ["convert_opset", "default_opset", "fix_declared_batch", "has_dynamic_batch", "is_float32", "load_onnx"]
