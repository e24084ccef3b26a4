"""PyTorch backbone definitions whose checkpoints facematch can export.

The registry below is importable without torch (CLI help, option checks); :func:`build_backbone`
imports torch and the definition on demand.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from typing import Any

from facematch.errors import InvalidArgumentError


@dataclass(frozen=True)
class ArchSpec:
    """One exportable architecture: where its builder lives and which layout it follows."""

    name: str
    module: str  # submodule of this package holding the builder
    builder: str  # function(name, *, num_features, input_size) -> nn.Module
    layout: str  # the reference code whose state_dict keys it matches
    # what follows ``forward_features`` up to the embedding (``forward_head``), for the card's explain block
    head: str = ""


_IRES = "insightface arcface_torch backbones/iresnet.py"
_MBF = "insightface arcface_torch backbones/mobilefacenet.py"
_SF = "opensphere model/backbone/sfnet.py"
_IRES_HEAD = "BatchNorm2d -> Flatten -> Dropout (identity at inference) -> Linear -> BatchNorm1d: affine"
_MBF_HEAD = "GDC: depthwise kxk Conv + BatchNorm2d -> Flatten -> Linear -> BatchNorm1d: affine"
_MBF_FC_HEAD = "output of the conv_reduce PReLU -> Flatten -> Linear -> BatchNorm1d: affine"
_SF_HEAD = "Flatten -> Dropout (identity at inference) -> Linear"

ARCHS: dict[str, ArchSpec] = {
    **{n: ArchSpec(n, "iresnet", "iresnet", _IRES, _IRES_HEAD) for n in ("r18", "r34", "r50", "r100", "r200")},
    "mbf": ArchSpec("mbf", "mobilefacenet", "mobilefacenet", _MBF, _MBF_HEAD),
    "mbf_large": ArchSpec("mbf_large", "mobilefacenet", "mobilefacenet", _MBF, _MBF_HEAD),
    "mbf_fc": ArchSpec(
        "mbf_fc", "mobilefacenet", "mobilefacenet", _MBF + " (released w600k_mbf head: 1x1 conv + fc)", _MBF_FC_HEAD
    ),
    **{
        f"{n}{s}": ArchSpec(
            f"{n}{s}",
            "sfnet",
            "sfnet",
            _SF + (" with BN" if s else " without BN"),
            _SF_HEAD + (" -> BatchNorm1d: affine" if s else ": affine"),
        )
        for n in ("sfnet20", "sfnet36", "sfnet64")
        for s in ("", "_bn")
    },
}
ALIASES = {f"iresnet{d}": f"r{d}" for d in (18, 34, 50, 100, 200)}


def canonical_arch(arch: str) -> str:
    """The registry name of ``arch`` (accepts ``iresnet50`` for ``r50``); raises on unknown names."""
    name = ALIASES.get(arch.lower(), arch.lower())
    if name not in ARCHS:
        raise InvalidArgumentError(f"unknown architecture {arch!r}; known: {', '.join(ARCHS)}")
    return name


def build_backbone(arch: str, *, num_features: int = 512, input_size: int = 112) -> Any:
    """A randomly initialised ``torch.nn.Module`` of ``arch`` in eval mode."""
    if input_size <= 0 or input_size % 16:
        raise InvalidArgumentError(f"input size must be a positive multiple of 16, got {input_size}")
    if num_features <= 0:
        raise InvalidArgumentError(f"embedding dimension must be positive, got {num_features}")
    spec = ARCHS[canonical_arch(arch)]
    mod = import_module(f"{__name__}.{spec.module}")
    model = getattr(mod, spec.builder)(spec.name, num_features=num_features, input_size=input_size)
    return model.eval()


__all__ = ["ALIASES", "ARCHS", "ArchSpec", "build_backbone", "canonical_arch"]
