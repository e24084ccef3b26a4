"""Gallery export and import: one portable file holding identities, metadata and templates.

The file is a ZIP archive (format version 1) with three members, readable with any ZIP tool,
``json`` and ``numpy``:

- ``manifest.json``: ``{"format": "facematch-gallery", "format_version": 1, "model_id", "dim",
  "card_sha256" (the embedder file's sha256 from its card, or null), "identities", "templates",
  "exported_at" (unix seconds), "facematch_version"}``;
- ``identities.jsonl``: one JSON object per identity, ordered by id: ``identity_id``,
  ``metadata``, ``created_at``, ``updated_at``, ``templates`` (how many rows of
  ``templates.npy`` are its), ``template_ids`` (their ids in the exporting gallery) and
  ``sources`` (what each was enrolled from);
- ``templates.npy``: every template as one float32 little-endian ``(templates, dim)`` array of
  unit vectors (``numpy.load`` reads it), identity by identity in the order above.

Import refuses a file made with another model (id, dimension, or the same id with another model
file) with ``ModelMismatchError``: the templates of two models are not comparable. Imported
templates get new ids; identity ids, metadata and sources are kept.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal

import numpy as np

from ..errors import GalleryError, InvalidArgumentError, ModelMismatchError
from ..model_files import load_card
from .binding import ModelBinding
from .store import Store, duplicate_identity, validate_identity_id
from .types import ExportInfo, ImportReport

if TYPE_CHECKING:
    from collections.abc import Sequence

logger = logging.getLogger(__name__)

FORMAT = "facematch-gallery"
FORMAT_VERSION = 1
MANIFEST, IDENTITIES, TEMPLATES = "manifest.json", "identities.jsonl", "templates.npy"
PAGE = 500  # identities read (and written) at a time
OnExisting = Literal["error", "skip"]


class Portability:
    """The gallery's export and import (a part of :class:`~facematch.gallery.Gallery`)."""

    # provided by Gallery
    _lock: threading.RLock
    _model: ModelBinding
    _store: Store

    if TYPE_CHECKING:

        def _check_open(self) -> object: ...

        def _check_writable(self) -> object: ...

        def _write_templates(
            self,
            identity_id: str,
            vectors: np.ndarray,
            sources: Sequence[str | None],
            *,
            create: bool,
            metadata: dict[str, Any] | None,
        ) -> tuple[int, ...]: ...

    def export_to(self, path: str | os.PathLike[str]) -> ExportInfo:
        """Write the whole gallery to one portable file (see the module docstring); returns what was written.

        The file is written beside its destination and renamed into place, so a failed export
        never leaves a partial file under ``path``. Writes of this handle wait meanwhile.
        """
        self._check_open()
        model_id, dim = self._model.model_id, self._model.dim
        if model_id is None or dim is None:
            raise GalleryError("the gallery is not bound to a model yet: nothing to export")
        dest = Path(path).expanduser()
        card = self._model.card
        with self._lock, tempfile.TemporaryDirectory(dir=dest.parent, prefix=".export-") as tmp:
            lines, rows = Path(tmp) / IDENTITIES, Path(tmp) / "templates.raw"
            n_identities = n_templates = 0
            with lines.open("w", encoding="utf-8") as jl, rows.open("wb") as raw:
                for infos in self._pages():
                    tids = [t for info in infos for t in info.template_ids]
                    ids, vectors = self._store.embeddings(tids, dim)
                    row_of = {int(t): k for k, t in enumerate(ids)}
                    sources = self._store.template_sources(tids)
                    for info in infos:
                        kept = [t for t in info.template_ids if t in row_of]  # a template removed meanwhile
                        raw.write(np.ascontiguousarray(vectors[[row_of[t] for t in kept]], "<f4").tobytes())
                        record = {
                            "identity_id": info.identity_id,
                            "metadata": info.metadata,
                            "created_at": info.created_at,
                            "updated_at": info.updated_at,
                            "templates": len(kept),
                            "template_ids": kept,
                            "sources": [sources.get(t) for t in kept],
                        }
                        jl.write(json.dumps(record, ensure_ascii=False) + "\n")
                        n_identities += 1
                        n_templates += len(kept)
            manifest = {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "model_id": model_id,
                "dim": dim,
                "card_sha256": card.sha256 if card is not None else None,
                "identities": n_identities,
                "templates": n_templates,
                "exported_at": time.time(),
                "facematch_version": _version(),
            }
            part = Path(tmp) / "out.zip"
            with zipfile.ZipFile(part, "w", zipfile.ZIP_DEFLATED, allowZip64=True) as zf:
                zf.writestr(MANIFEST, json.dumps(manifest, indent=2))
                zf.write(lines, IDENTITIES)
                with zf.open(TEMPLATES, "w", force_zip64=True) as out, rows.open("rb") as src:
                    header = {"descr": "<f4", "fortran_order": False, "shape": (n_templates, dim)}
                    np.lib.format.write_array_header_1_0(out, header)
                    while block := src.read(1 << 22):
                        out.write(block)
            os.replace(part, dest)
        logger.info("exported %d identities (%d templates) to %s", n_identities, n_templates, dest)
        return ExportInfo(str(dest), model_id, dim, n_identities, n_templates, FORMAT_VERSION)

    def _pages(self) -> Iterator[list[Any]]:
        after: str | None = None
        while True:
            infos = self._store.list_identities(after, PAGE)
            if not infos:
                return
            yield infos
            after = infos[-1].identity_id

    def import_from(self, path: str | os.PathLike[str], *, on_existing: OnExisting = "error") -> ImportReport:
        """Add the identities of an exported file to this gallery (an unbound gallery is bound to its model).

        ``on_existing``: ``"error"`` refuses the whole file (``DuplicateIdentityError``, nothing
        written) when any of its identities exists here; ``"skip"`` keeps the existing ones and
        imports the rest. Raises ``ModelMismatchError`` for another model's file, before writing.
        Each identity is written in one transaction.
        """
        if on_existing not in ("error", "skip"):
            raise InvalidArgumentError(f"on_existing must be 'error' or 'skip', got {on_existing!r}")
        self._check_writable()
        src = Path(path).expanduser()
        try:
            zf = zipfile.ZipFile(src)
        except (OSError, zipfile.BadZipFile) as exc:
            raise InvalidArgumentError(f"{src} is not a facematch gallery export: {exc}") from exc
        with zf:
            manifest = _manifest(zf, src)
            model_id, dim = str(manifest["model_id"]), int(manifest["dim"])
            self._check_model(model_id, dim, manifest.get("card_sha256"), src)
            records = _records(zf, src)
            existing = {r["identity_id"] for r in records if self._store.identity_key(r["identity_id"]) is not None}
            if existing and on_existing == "error":
                raise duplicate_identity(sorted(existing)[0])
            imported: list[str] = []
            written = 0
            with zf.open(TEMPLATES) as f:
                rows = _NpyRows(f, dim, sum(int(r["templates"]) for r in records), src)
                for r in records:
                    vectors = rows.take(int(r["templates"]))
                    if r["identity_id"] in existing:
                        continue
                    if len(vectors):
                        vectors = self._model.check_embeddings(vectors, model_id)
                    sources = list(r.get("sources") or [None] * len(vectors))
                    self._write_templates(r["identity_id"], vectors, sources, create=True, metadata=r["metadata"])
                    imported.append(r["identity_id"])
                    written += len(vectors)
        logger.info("imported %d identities (%d templates) from %s", len(imported), written, src)
        return ImportReport(str(src), model_id, tuple(imported), tuple(sorted(existing)), written)

    def _check_model(self, model_id: str, dim: int, card_sha: object, src: Path) -> None:
        """The file's model must be this gallery's (binding an unbound gallery) and the same model file."""
        bound = self._model.model_id
        self._model.bind(model_id, dim)  # ModelMismatchError for another id or dimension
        if bound is None:
            logger.info("gallery bound to %s by the import of %s", model_id, src)
        try:
            local = load_card(model_id).sha256
        except Exception:  # no local card for the id: nothing more to compare
            local = None
        if isinstance(card_sha, str) and local is not None and card_sha.lower() != local:
            raise ModelMismatchError(
                f"{src} was made with another {model_id!r} model file (sha256 {card_sha[:12]}…, "
                f"this one is {local[:12]}…); its templates are not comparable",
                model=model_id,
            )


def _manifest(zf: zipfile.ZipFile, src: Path) -> dict[str, Any]:
    try:
        manifest = json.loads(zf.read(MANIFEST))
    except (KeyError, ValueError) as exc:
        raise InvalidArgumentError(f"{src} is not a facematch gallery export (no readable {MANIFEST})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise InvalidArgumentError(f"{src} is not a facematch gallery export")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise InvalidArgumentError(f"{src} has export format {version!r}; this facematch reads up to {FORMAT_VERSION}")
    if not isinstance(manifest.get("model_id"), str) or not isinstance(manifest.get("dim"), int):
        raise InvalidArgumentError(f"{src}: the manifest has no model_id/dim")
    return manifest


def _records(zf: zipfile.ZipFile, src: Path) -> list[dict[str, Any]]:
    try:
        text = zf.read(IDENTITIES).decode("utf-8")
    except (KeyError, UnicodeError) as exc:
        raise InvalidArgumentError(f"{src}: no readable {IDENTITIES}") from exc
    records = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
            r["identity_id"] = validate_identity_id(r["identity_id"])
            if not isinstance(r.get("templates"), int) or r["templates"] < 0:
                raise ValueError("templates must be a count")
            if not isinstance(r.get("metadata", {}), dict):
                raise ValueError("metadata must be an object")
            r.setdefault("metadata", {})
        except (ValueError, KeyError, TypeError, InvalidArgumentError) as exc:
            raise InvalidArgumentError(f"{src}: {IDENTITIES} line {n} is not a valid identity record: {exc}") from exc
        records.append(r)
    return records


class _NpyRows:
    """Rows of a ``(n, dim)`` float32 ``.npy`` member, read a few at a time."""

    def __init__(self, f: IO[bytes], dim: int, expected: int, src: Path) -> None:
        try:
            version = np.lib.format.read_magic(f)
            read_header = (
                np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            )
            shape, fortran, dtype = read_header(f)
        except ValueError as exc:
            raise InvalidArgumentError(f"{src}: {TEMPLATES} is not a .npy array: {exc}") from exc
        if fortran or np.dtype(dtype) != np.dtype("<f4") or tuple(shape) != (expected, dim):
            raise InvalidArgumentError(
                f"{src}: {TEMPLATES} is {dtype} {shape}, expected float32 ({expected}, {dim}) as the records say"
            )
        self._f, self._dim, self._src = f, dim, src

    def take(self, n: int) -> np.ndarray:
        size = n * self._dim * 4
        data = self._f.read(size)
        if len(data) != size:
            raise InvalidArgumentError(f"{self._src}: {TEMPLATES} ends early")
        return np.frombuffer(data, "<f4").reshape(n, self._dim).astype(np.float32)


def _version() -> str:
    from .. import __version__

    return __version__


__all__ = ["FORMAT", "FORMAT_VERSION", "OnExisting", "Portability"]
