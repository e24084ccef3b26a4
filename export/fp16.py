"""``export fp16``: an fp32 ONNX embedding model → fp16 weights and activations, checked against the source.

Inputs and outputs stay float32 (callers feed the same tensors). The L2-normalisation tail
(``ReduceL2``/``Clip``/``Div``/...) stays in float32: a sum of 512 squared features can exceed
the fp16 range (65504).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

from facematch.errors import BackendUnavailableError, InvalidArgumentError

from .card import (
    card_id_for,
    derived_card,
    library_versions,
    load_float32_source,
    tool_version,
    write_onnx_with_card,
)
from .faces import FaceSet
from .onnx_export import ExportResult
from .onnx_utils import default_opset, fix_declared_batch
from .runners import OnnxRunner
from .validate import ExportValidationError, compare

logger = logging.getLogger(__name__)

FLOAT32_OPS = ("ReduceL2", "ReduceSumSquare", "Sqrt", "Clip", "Div", "Expand", "Pow", "ReduceSum")


def convert_fp16(
    src: str | Path,
    out: str | Path,
    *,
    faces: FaceSet | None = None,
    force: bool = False,
    card: str | None = None,
    card_id: str | None = None,
) -> ExportResult:
    """Convert ``src`` to fp16 at ``out``; below min cosine 0.999 raise :class:`ExportValidationError`."""
    try:
        from onnxconverter_common import float16
    except ImportError as exc:
        msg = "export fp16 needs onnxconverter-common: pip install 'facematch[export]'"
        raise BackendUnavailableError(msg) from exc

    src, out = Path(src), Path(out)
    if out.suffix != ".onnx":
        raise InvalidArgumentError(f"output must end with .onnx, got {out.name}")
    base, model = load_float32_source(src, card, "fp16")
    ref = OnnxRunner(model.SerializeToString(), base)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "float32 number ... truncated" for the tiny Clip eps
        half = float16.convert_float_to_float16(
            model,
            keep_io_types=True,
            op_block_list=list(float16.DEFAULT_OP_BLOCK_LIST) + list(FLOAT32_OPS),
        )
    half = fix_declared_batch(half)
    options = {"source": src.name, "source_sha256": base.sha256, "keep_io_types": True, "float32_ops": FLOAT32_OPS}
    new = derived_card(
        base,
        id=card_id or card_id_for(out),
        file=out.name,
        precision="fp16",
        opset=default_opset(half),
        description=f"fp16 of {base.id}. " + base.description,
        export={"tool": tool_version(), "libraries": library_versions(), "command": "fp16", "options": options},
    )
    report = compare(ref, OnnxRunner(half.SerializeToString(), new), precision="fp16", faces=faces)
    if not report.passed and not force:
        raise ExportValidationError(f"fp16 model is not close enough to {src.name}: {report.summary()}")
    new = new.model_copy(update={"export": {**(new.export or {}), "validation": report.to_dict()}})
    written = write_onnx_with_card(half, new, out)
    return ExportResult(out, written, report)


__all__ = ["FLOAT32_OPS", "convert_fp16"]
