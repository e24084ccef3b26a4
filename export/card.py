"""Model cards of exported models: built from the export facts, embedded in ONNX metadata and written beside the file.

An ONNX file cannot hold its own sha256. The card embedded in ``metadata_props`` therefore records
the *content* hash (:func:`facematch.model_files.onnx_content_sha256`: the file serialised without the
card entry), which :func:`facematch.model_files.verify_file` accepts; the sidecar ``<stem>.card.json``
records the plain file sha256. Calibration is never copied from another model: an exported card
has no thresholds until ``facematch calibrate`` runs on it.
"""

from __future__ import annotations

import hashlib
import logging
import re
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from facematch.cards import (
    CARD_METADATA_KEY,
    EmbeddingSpec,
    ExplainSpec,
    InputSpec,
    License,
    ModelCard,
    Source,
    sidecar_path,
    write_card,
)
from facematch.errors import InvalidArgumentError, ModelError
from facematch.model_files import file_sha256, list_cards, load_card

from .formats import check_source_precision
from .onnx_utils import fix_declared_batch, is_float32, load_onnx

logger = logging.getLogger(__name__)

UNKNOWN_LICENSE = License(
    name="unspecified",
    commercial_use=False,
    note="Set by the owner of the checkpoint; facematch does not know the terms of these weights.",
)
PLACEHOLDER_SHA = "0" * 64


def tool_version() -> str:
    """``facematch-export <version>`` (plus torch / onnxruntime versions where installed)."""
    try:
        v = version("facematch")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        v = "unknown"
    return f"facematch.export {v}"


def library_versions() -> dict[str, str]:
    out: dict[str, str] = {}
    for dist in ("torch", "onnx", "onnxruntime", "onnxruntime-gpu", "onnxconverter-common", "tensorrt"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            continue
    return out


def card_id_for(path: Path) -> str:
    """A card id from a file name (``my_r50.onnx`` → ``my_r50``)."""
    cid = re.sub(r"[^A-Za-z0-9_.\-]+", "_", path.stem).strip("._-")
    if not cid:
        raise InvalidArgumentError(f"cannot derive a card id from {path.name!r}; pass --id")
    return cid


def embedding_card(
    *,
    card_id: str,
    file: str,
    arch: str,
    input_size: int,
    dim: int,
    normalized: bool,
    norm_output_index: int | None,
    opset: int,
    precision: str,
    dynamic_batch: bool,
    checkpoint_sha256: str | None,
    export: dict[str, Any],
    description: str = "",
    license: License | None = None,
    input_spec: InputSpec | None = None,
    upstream: str | None = None,
    explain: ExplainSpec | None = None,
) -> ModelCard:
    """A card for an exported embedding model (sha256 is filled in when the file is written)."""
    spec = input_spec or InputSpec(size=(input_size, input_size))
    spec = spec.model_copy(update={"size": (input_size, input_size), "dynamic_batch": dynamic_batch})
    return ModelCard(
        id=card_id,
        task="embedding",
        description=description or f"{arch} embedding model exported by facematch.export ({precision}).",
        file=file,
        sha256=PLACEHOLDER_SHA,
        source=Source(checkpoint_sha256=checkpoint_sha256, upstream=upstream),
        license=license or UNKNOWN_LICENSE,
        input=spec,
        alignment_template="arcface_112",
        embedding=EmbeddingSpec(dim=dim, normalized_output=normalized, norm_output_index=norm_output_index),
        calibration=None,
        explain=explain,
        arch=arch,
        opset=opset,
        precision=precision,  # type: ignore[arg-type]
        export=export,
    )


def derived_card(base: ModelCard, **update: Any) -> ModelCard:
    """A card for a model converted from ``base`` (fp16/int8/TensorRT): same input/arch facts, no calibration."""
    data = base.model_dump(exclude={"card_path"})
    data.update(update)
    data["calibration"] = None
    data.setdefault("sha256", PLACEHOLDER_SHA)
    return ModelCard.model_validate(data)


def source_card(path: Path, card: str | None = None) -> ModelCard:
    """The card of an input model: ``card`` if given, else its own (embedded/sidecar), else a known card by sha256."""
    if card is not None:
        return load_card(card)
    try:
        return load_card(path)
    except ModelError:
        digest = file_sha256(path)
        for c in list_cards():
            if c.sha256 == digest:
                logger.info("%s identified as card %r by sha256", path, c.id)
                return c
        raise InvalidArgumentError(
            f"{path} has no facematch card (metadata, sidecar, or a known sha256); pass --card CARD.json so the "
            "export knows its input size, colour order and normalisation"
        ) from None


def load_float32_source(src: Path, card: str | None, fmt: str) -> tuple[ModelCard, Any]:
    """The card and the ``onnx.ModelProto`` (card stripped, batch declared dynamic) of an fp32 source for ``fmt``."""
    base = source_card(src, card)
    check_source_precision(fmt, base.precision)
    model = load_onnx(src)
    if not is_float32(model):
        raise InvalidArgumentError(f"{src} is not an fp32 model (fp16 or already quantized)")
    strip_card(model)
    return base, fix_declared_batch(model)


def strip_card(model: Any) -> None:
    """Remove the facematch card entry from an ``onnx.ModelProto``'s metadata (in place)."""
    keep = [p for p in model.metadata_props if p.key != CARD_METADATA_KEY]
    del model.metadata_props[:]
    for p in keep:
        model.metadata_props.add(key=p.key, value=p.value)


def write_onnx_with_card(model: Any, card: ModelCard, out: Path) -> ModelCard:
    """Write ``model`` (an ``onnx.ModelProto``) to ``out`` with ``card`` in its metadata and as a sidecar.

    Returns the sidecar card (its sha256 is the file's). The file is written atomically.
    """
    strip_card(model)
    content_sha = hashlib.sha256(model.SerializeToString()).hexdigest()
    embedded = card.model_copy(update={"file": out.name, "sha256": content_sha})
    model.metadata_props.add(key=CARD_METADATA_KEY, value=embedded.to_json())
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(model.SerializeToString())
    tmp.replace(out)
    return write_sidecar(card, out)


def write_sidecar(card: ModelCard, out: Path) -> ModelCard:
    """Write the sidecar card of ``out`` with the file's sha256; returns it."""
    side = card.model_copy(update={"file": out.name, "sha256": file_sha256(out)})
    write_card(side, sidecar_path(out))
    logger.info("wrote %s and its card %s", out, sidecar_path(out))
    return side


__all__ = [
    "UNKNOWN_LICENSE",
    "card_id_for",
    "derived_card",
    "embedding_card",
    "library_versions",
    "source_card",
    "strip_card",
    "tool_version",
    "write_onnx_with_card",
    "write_sidecar",
]
