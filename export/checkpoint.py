"""Checkpoint loading: unwrap common containers, match keys strictly, record the sha256."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from facematch.errors import InvalidArgumentError, ModelNotFoundError
from facematch.model_files import file_sha256

logger = logging.getLogger(__name__)

# containers tried in order when the file is not a plain state_dict
WRAPPER_KEYS = ("state_dict_backbone", "state_dict", "model", "backbone", "net", "model_state_dict")
EMA_KEYS = ("ema", "model_ema", "state_dict_ema", "ema_state_dict")
STRIP_PREFIXES = ("module.", "_orig_mod.", "backbone.", "model.")
# buffers whose absence is harmless (checkpoints written before torch 0.4.1 lack them)
OPTIONAL_SUFFIXES = (".num_batches_tracked",)
MAX_LISTED = 12


class CheckpointError(InvalidArgumentError):
    """A checkpoint cannot be read or does not match the architecture."""

    code = "checkpoint_mismatch"


@dataclass(frozen=True)
class LoadedCheckpoint:
    """A state_dict unwrapped from a checkpoint file, with where it came from."""

    path: Path
    sha256: str
    state_dict: dict[str, Any]
    container: str  # "" for a plain state_dict, else the wrapper key used
    stripped_prefix: str = ""
    dropped: tuple[str, ...] = field(default_factory=tuple)


def _is_state_dict(obj: Any) -> bool:
    import torch

    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def _as_state_dict(obj: Any) -> Any:
    import torch

    if isinstance(obj, torch.nn.Module):
        return obj.state_dict()
    return obj


def unwrap(obj: Any, *, key: str | None = None, prefer_ema: bool = False) -> tuple[dict[str, Any], str]:
    """The state_dict inside a loaded checkpoint object, and the container key used ("" if none)."""
    obj = _as_state_dict(obj)
    if key is not None:
        if not isinstance(obj, Mapping) or key not in obj:
            have = list(obj)[:MAX_LISTED] if isinstance(obj, Mapping) else type(obj).__name__
            raise CheckpointError(f"checkpoint has no key {key!r}; top-level keys: {have}")
        inner = _as_state_dict(obj[key])
        if not _is_state_dict(inner):
            raise CheckpointError(f"checkpoint[{key!r}] is not a state_dict of tensors")
        return dict(inner), key
    if _is_state_dict(obj):
        return dict(obj), ""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"checkpoint holds a {type(obj).__name__}, not a state_dict or a dict wrapping one")
    order = (*EMA_KEYS, *WRAPPER_KEYS) if prefer_ema else (*WRAPPER_KEYS, *EMA_KEYS)
    for k in order:
        if k in obj:
            inner = _as_state_dict(obj[k])
            if _is_state_dict(inner):
                return dict(inner), k
            if isinstance(inner, Mapping):  # e.g. {"model": {"state_dict": ...}}
                nested, sub = unwrap(inner, prefer_ema=prefer_ema)
                return nested, f"{k}.{sub}" if sub else k
    raise CheckpointError(
        "checkpoint is neither a state_dict nor a known wrapper "
        f"({', '.join(order)}); top-level keys: {list(obj)[:MAX_LISTED]}; pass --key to choose one"
    )


def strip_prefixes(sd: dict[str, Any], expected: set[str]) -> tuple[dict[str, Any], str]:
    """Remove wrapper prefixes (``module.`` from DDP, ``_orig_mod.`` from torch.compile, ...) when that helps."""
    stripped = ""
    changed = True
    while changed:
        changed = False
        if not sd or set(sd) & expected == expected:
            break
        for p in STRIP_PREFIXES:
            if all(k.startswith(p) for k in sd):
                sd = {k[len(p) :]: v for k, v in sd.items()}
                stripped += p
                changed = True
                break
    return sd, stripped


def read_checkpoint(path: str | Path, *, key: str | None = None, prefer_ema: bool = False) -> LoadedCheckpoint:
    """Load a checkpoint file (tensors only: ``torch.load(weights_only=True)``) and unwrap its state_dict."""
    import torch

    p = Path(path)
    if not p.is_file():
        raise ModelNotFoundError(f"checkpoint not found: {p}")
    try:
        obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"cannot read {p} as a tensors-only torch checkpoint ({type(exc).__name__}: {str(exc)[:300]}); "
            "save model.state_dict() instead of a pickled model object"
        ) from exc
    sd, container = unwrap(obj, key=key, prefer_ema=prefer_ema)
    return LoadedCheckpoint(path=p, sha256=file_sha256(p), state_dict=sd, container=container)


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:MAX_LISTED])
    return shown + (f", ... (+{len(keys) - MAX_LISTED} more)" if len(keys) > MAX_LISTED else "")


def load_into(model: Any, ckpt: LoadedCheckpoint, *, arch: str = "") -> LoadedCheckpoint:
    """Copy ``ckpt`` into ``model`` with strict key and shape matching.

    Raises :class:`CheckpointError` listing missing, unexpected and shape-mismatched keys.
    Only ``num_batches_tracked`` buffers may be absent (they do not affect inference).
    """
    own = model.state_dict()
    sd, stripped = strip_prefixes(ckpt.state_dict, set(own))
    missing = sorted(k for k in own if k not in sd and not k.endswith(OPTIONAL_SUFFIXES))
    unexpected = sorted(k for k in sd if k not in own)
    mismatched = sorted(
        f"{k} (checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)})"
        for k in own
        if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)
    )
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)}: {_listing(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)}: {_listing(unexpected)}")
        if mismatched:
            parts.append(f"shape-mismatched {len(mismatched)}: {_listing(mismatched)}")
        what = f" for architecture {arch!r}" if arch else ""
        raise CheckpointError(
            f"checkpoint {ckpt.path.name} does not match the model{what}: " + "; ".join(parts),
            missing=missing,
            unexpected=unexpected,
            mismatched=mismatched,
        )
    filled = {k: v for k, v in own.items() if k not in sd}  # optional buffers only
    model.load_state_dict({**filled, **sd}, strict=True)
    logger.info("loaded %d tensors from %s (container %r)", len(sd), ckpt.path, ckpt.container or "-")
    return LoadedCheckpoint(
        path=ckpt.path,
        sha256=ckpt.sha256,
        state_dict=ckpt.state_dict,
        container=ckpt.container,
        stripped_prefix=stripped,
        dropped=tuple(filled),
    )


def load_backbone(
    arch: str,
    checkpoint: str | Path,
    *,
    input_size: int = 112,
    num_features: int | None = None,
    key: str | None = None,
    prefer_ema: bool = False,
) -> tuple[Any, LoadedCheckpoint]:
    """Build ``arch`` and load ``checkpoint`` into it strictly; the embedding size comes from the checkpoint."""
    from .backbones import build_backbone, canonical_arch

    name = canonical_arch(arch)
    ckpt = read_checkpoint(checkpoint, key=key, prefer_ema=prefer_ema)
    if num_features is None:
        num_features = _infer_num_features(ckpt.state_dict)
    model = build_backbone(name, num_features=num_features, input_size=input_size)
    info = load_into(model, ckpt, arch=name)
    return model.eval(), info


def _infer_num_features(sd: dict[str, Any]) -> int:
    """Embedding size from the final BN1d (``features``) or fc weight; 512 when neither is found."""
    for k, v in sd.items():
        base = k.split("module.")[-1]
        if base.endswith(("features.running_mean", "features.layers.3.running_mean")) and v.ndim == 1:
            return int(v.shape[0])
    for k, v in sd.items():
        if k.endswith("fc.weight") and v.ndim == 2:
            return int(v.shape[0])
    return 512


__all__ = [
    "CheckpointError",
    "LoadedCheckpoint",
    "load_backbone",
    "load_into",
    "read_checkpoint",
    "strip_prefixes",
    "unwrap",
]
