"""``export onnx``: a PyTorch checkpoint → a checked fp32 ONNX embedding model with a card."""

from __future__ import annotations

import logging
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from facematch.cards import ExplainSpec, InputSpec, ModelCard
from facematch.errors import InvalidArgumentError

from .card import card_id_for, embedding_card, library_versions, tool_version, write_onnx_with_card
from .checkpoint import load_backbone
from .faces import FaceSet
from .formats import check_onnx_options
from .runners import OnnxRunner, TorchRunner
from .validate import ExportValidationError, ValidationReport, compare

logger = logging.getLogger(__name__)

INPUT_NAME = "input"
OUTPUT_NAME = "embedding"
NORM_NAME = "norm"
FEATURES_NAME = "features"  # the last feature map, the head's input: the card's explain block names it


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote and how it validated."""

    path: Path
    card: ModelCard
    report: ValidationReport


def wrap_head(backbone: Any, *, normalize: bool, with_norm: bool, features: bool = True, eps: float = 1e-12) -> Any:
    """``backbone`` followed by optional L2 normalisation, an optional norm output and, last, its feature map.

    With ``features`` the module also returns the tensor its head reads (``forward_features``), so
    the exported graph has it as an output for :mod:`facematch.explain`.
    """
    import torch
    from torch import nn

    class EmbeddingHead(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = backbone

        def forward(self, x: torch.Tensor) -> Any:
            fmap = self.backbone.forward_features(x)
            feats = self.backbone.forward_head(fmap)
            outs: tuple[torch.Tensor, ...] = (feats,)
            if normalize:
                norm = torch.linalg.vector_norm(feats, ord=2, dim=1, keepdim=True)
                outs = (feats / norm.clamp_min(eps), *((norm.squeeze(1),) if with_norm else ()))
            if features:
                outs = (*outs, fmap)
            return outs if len(outs) > 1 else outs[0]

    return EmbeddingHead().eval()


def torch_to_onnx(
    module: Any, *, input_size: int, opset: int, fixed_batch: int | None, with_norm: bool, features: bool = True
) -> Any:
    """Trace ``module`` to an ``onnx.ModelProto`` with stable tensor names (TorchScript exporter)."""
    import onnx
    import torch

    outputs = [OUTPUT_NAME, NORM_NAME] if with_norm else [OUTPUT_NAME]
    if features:
        outputs.append(FEATURES_NAME)
    dynamic = None if fixed_batch else {name: {0: "batch"} for name in [INPUT_NAME, *outputs]}
    dummy = torch.zeros(fixed_batch or 2, 3, input_size, input_size)
    with (
        tempfile.TemporaryDirectory(prefix="facematch-onnx-") as tmp,
        warnings.catch_warnings(),
        torch.no_grad(),
    ):
        path = Path(tmp, "model.onnx")
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                module,
                (dummy,),
                str(path),
                dynamo=False,
                input_names=[INPUT_NAME],
                output_names=outputs,
                dynamic_axes=dynamic,
                opset_version=opset,
                do_constant_folding=True,
            )
        except Exception as exc:
            raise InvalidArgumentError(f"ONNX export failed at opset {opset}: {type(exc).__name__}: {exc}") from exc
        model = onnx.load(str(path))
    if features:
        separate_output(model, FEATURES_NAME)
    onnx.checker.check_model(model)
    return model


def separate_output(model: Any, name: str) -> None:
    """Make graph output ``name`` an Identity of the tensor the graph reads internally (``<name>_map``), in place.

    A tensor that is both an output and an input of later nodes trips converters that retype
    outputs: fp16's ``keep_io_types`` casts the output back to float32 and the head's fp16 nodes
    then read the float32 copy. With the Identity, the internal consumers keep their own tensor.
    """
    from onnx import helper

    graph = model.graph
    internal = f"{name}_map"
    if not any(name in n.input for n in graph.node):
        return
    for node in graph.node:
        for k, v in enumerate(node.output):
            if v == name:
                node.output[k] = internal
        for k, v in enumerate(node.input):
            if v == name:
                node.input[k] = internal
    graph.node.append(helper.make_node("Identity", [internal], [name], name=f"{name}_output"))


def explain_spec(proto: Any, head: str, *, normalize: bool) -> ExplainSpec:
    """The card's explain block of an exported graph: its ``features`` output and the head's output.

    The feature shape is read from the traced graph. When the graph L2-normalises, the head ends at
    the tensor the normalisation divides (the pre-normalisation embedding), found in the graph we built.
    """
    out = {o.name: o for o in proto.graph.output}
    dims = out[FEATURES_NAME].type.tensor_type.shape.dim
    shape = (int(dims[1].dim_value), int(dims[2].dim_value), int(dims[3].dim_value))
    embedding_output = None
    if normalize:
        producer = next(n for n in proto.graph.node if OUTPUT_NAME in n.output)
        if producer.op_type != "Div":  # pragma: no cover - wrap_head divides by the norm
            raise InvalidArgumentError(f"unexpected normalisation node {producer.op_type} in the exported graph")
        embedding_output = producer.input[0]
        head = f"{head}; then L2 normalisation (not part of the decomposed head)"
    return ExplainSpec(feature=FEATURES_NAME, feature_shape=shape, head=head, embedding_output=embedding_output)


def export_onnx(
    arch: str,
    checkpoint: str | Path,
    out: str | Path,
    *,
    input_size: int = 112,
    opset: int = 17,
    batch: str = "dynamic",
    normalize: bool = False,
    with_norm: bool = False,
    faces: FaceSet | None = None,
    force: bool = False,
    card_id: str | None = None,
    key: str | None = None,
    prefer_ema: bool = False,
    input_spec: InputSpec | None = None,
) -> ExportResult:
    """Export ``checkpoint`` (architecture ``arch``) to ONNX at ``out``, check it, and write its card.

    The export is compared with the PyTorch model on ``faces`` (when given) and on random inputs at
    batch 1 and 7; below min cosine 0.9999 it raises :class:`ExportValidationError` and writes
    nothing, unless ``force`` (then the failed report is recorded in the card).
    """
    from .backbones import ARCHS, canonical_arch

    out = Path(out)
    fixed_batch = check_onnx_options(
        opset=opset, batch=batch, normalize=normalize, with_norm=with_norm, input_size=input_size
    )
    if out.suffix != ".onnx":
        raise InvalidArgumentError(f"--out must end with .onnx, got {out.name}")
    name = canonical_arch(arch)
    backbone, ckpt = load_backbone(name, checkpoint, input_size=input_size, key=key, prefer_ema=prefer_ema)
    module = wrap_head(backbone, normalize=normalize, with_norm=with_norm)
    proto = torch_to_onnx(module, input_size=input_size, opset=opset, fixed_batch=fixed_batch, with_norm=with_norm)
    dim = int(proto.graph.output[0].type.tensor_type.shape.dim[1].dim_value)
    explain = explain_spec(proto, ARCHS[name].head, normalize=normalize)
    options = {
        "arch": name,
        "checkpoint": Path(checkpoint).name,
        "checkpoint_container": ckpt.container or None,
        "checkpoint_prefix_stripped": ckpt.stripped_prefix or None,
        "input_size": input_size,
        "opset": opset,
        "batch": "dynamic" if fixed_batch is None else fixed_batch,
        "normalize": normalize,
        "with_norm": with_norm,
        "input_name": INPUT_NAME,
        "output_names": [o.name for o in proto.graph.output],
    }
    card = embedding_card(
        card_id=card_id or card_id_for(out),
        file=out.name,
        arch=name,
        input_size=input_size,
        dim=dim,
        normalized=normalize,
        norm_output_index=1 if with_norm else None,
        opset=opset,
        precision="fp32",
        dynamic_batch=fixed_batch is None,
        checkpoint_sha256=ckpt.sha256,
        export={"tool": tool_version(), "libraries": library_versions(), "command": "onnx", "options": options},
        input_spec=input_spec,
        upstream=f"PyTorch checkpoint in the {ARCHS[name].layout} layout",
        explain=explain,
    )
    candidate = OnnxRunner(proto.SerializeToString(), card)
    report = compare(TorchRunner(backbone, card.input), candidate, precision="fp32", faces=faces)
    if not report.passed and not force:
        raise ExportValidationError(f"export does not match the PyTorch model: {report.summary()}")
    card = card.model_copy(update={"export": {**(card.export or {}), "validation": report.to_dict()}})
    written = write_onnx_with_card(proto, card, out)
    return ExportResult(out, written, report)


__all__ = [
    "FEATURES_NAME",
    "INPUT_NAME",
    "NORM_NAME",
    "OUTPUT_NAME",
    "ExportResult",
    "explain_spec",
    "export_onnx",
    "separate_output",
    "torch_to_onnx",
    "wrap_head",
]
