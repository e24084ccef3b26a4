"""The gallery: enrol identities (several face templates each) and identify probes, open-set.

    g = Gallery.open("people.fmg")
    report = g.enroll("alice", ["a1.jpg", "a2.jpg"], metadata={"team": "red"})
    hits = g.identify("probe.jpg", k=5)     # IdentifyResult: ranked identities, or is_unknown
    g.delete("alice"); page = g.list(limit=50, cursor=page.next_cursor)

A gallery is a directory: ``gallery.sqlite3`` (the source of truth, WAL mode), the
derived FAISS index (``index.faiss`` + ``index.json``) and ``writer.lock``.
"""

from __future__ import annotations

import builtins
import json
import logging
import math
import numbers
import os
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ..calibration import Calibration
from ..cards import ModelCard
from ..errors import (
    CalibrationMissingError,
    DuplicateIdentityError,
    FacematchError,
    GalleryError,
    IdentityNotFoundError,
    InvalidArgumentError,
    InvalidImageError,
    ModelMismatchError,
    MultipleFacesError,
    NoFaceError,
    TemplateNotFoundError,
)
from ..model_files import load_card
from ..types import Candidate, IdentifyResult
from .config import AGGREGATIONS, Aggregation, IndexConfig
from .index import FaissIndex, VectorIndex
from .lock import WriterLock
from .openset import aggregate, check_aggregation, needs_extrapolation, threshold_for_fpir
from .owners import TemplateOwners
from .store import Store, Synchronous, decode_cursor, dump_metadata, encode_cursor, validate_identity_id
from .types import EnrollReport, GalleryInfo, IdentityInfo, ImageOutcome, Page

if TYPE_CHECKING:
    from ..matcher import FaceMatcher

logger = logging.getLogger(__name__)

DB_FILE = "gallery.sqlite3"
BACKENDS = ("faiss", "milvus")
MULTI_FACE_POLICIES = ("largest", "reject")
DEFAULT_FPIR = 0.01
MAX_K = 1000
_REBUILD_FRACTION = 0.5  # repair by delta below this much disagreement, rebuild above

Backend = Literal["faiss", "milvus"]
_Ranked = list[tuple[int, float, int]]  # (identity rowid, similarity, best template id), best first
MultiFacePolicy = Literal["largest", "reject"]


def _source_label(image: Any, i: int) -> str:
    if isinstance(image, (str, os.PathLike)):
        return Path(os.fspath(image)).name
    return f"#{i}"


def _as_image_list(images: Any) -> list[Any]:
    if isinstance(images, (str, os.PathLike, bytes, bytearray, memoryview)):
        return [images]
    if isinstance(images, np.ndarray):
        return list(images) if images.ndim == 4 else [images]
    if isinstance(images, Sequence):
        return list(images)
    if hasattr(images, "mode") and hasattr(images, "size"):  # a PIL image
        return [images]
    raise InvalidArgumentError(f"images must be an image or a list of images, got {type(images).__name__}")


class Gallery:
    """A persistent, model-bound face gallery with open-set identification.

    Args:
        path: the gallery directory (created when absent unless ``create=False``).
        backend: ``"faiss"`` (embedded, default) or ``"milvus"`` (``pymilvus``; milvus-lite
            file inside the gallery, or a server at ``milvus_uri``). Defaults to the
            backend the gallery was created with.
        index: FAISS index structure; defaults to the one stored with the gallery (flat).
        model: embedder card id / card / model path the gallery is for. When omitted the
            gallery binds to the model of its first enrolment.
        matcher: the FaceMatcher used for image inputs (``facematch.default_matcher()``
            on first use when omitted).
        read_only: open without the writer lock; writes raise ``GalleryError``.
        aggregation: per-identity score from template scores: ``max``, ``mean`` or ``topk_mean``.
        default_fpir: target FPIR used by ``identify`` when neither ``threshold`` nor ``fpir`` is given.
        calibration: impostor calibration to use instead of the embedder card's.
        multi_face: ``"largest"`` enrols the largest face of a multi-face image, ``"reject"`` reports it.
        synchronous: SQLite ``FULL`` (survives power loss) or ``NORMAL`` (survives process kills).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        backend: Backend | None = None,
        index: IndexConfig | dict[str, Any] | None = None,
        model: str | os.PathLike[str] | ModelCard | None = None,
        matcher: FaceMatcher | None = None,
        read_only: bool = False,
        create: bool = True,
        aggregation: Aggregation = "max",
        aggregation_top_k: int = 3,
        default_fpir: float = DEFAULT_FPIR,
        calibration: Calibration | None = None,
        multi_face: MultiFacePolicy = "largest",
        synchronous: Synchronous = "FULL",
        milvus_uri: str | None = None,
    ) -> None:
        check_aggregation(aggregation, aggregation_top_k)
        if isinstance(index, dict):
            index = IndexConfig.from_dict(index, strict=True)
        elif index is not None and not isinstance(index, IndexConfig):
            raise InvalidArgumentError(f"index must be an IndexConfig or a dict, got {type(index).__name__}")
        if multi_face not in MULTI_FACE_POLICIES:
            raise InvalidArgumentError(f"multi_face must be one of {MULTI_FACE_POLICIES}, got {multi_face!r}")
        if backend is not None and backend not in BACKENDS:
            raise InvalidArgumentError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if not (0.0 < default_fpir < 1.0):
            raise InvalidArgumentError(f"default_fpir must be in (0, 1), got {default_fpir}")
        self.path = Path(path).expanduser()
        self.read_only = read_only
        self.aggregation: Aggregation = aggregation
        self.aggregation_top_k = aggregation_top_k
        self.default_fpir = default_fpir
        self.multi_face: MultiFacePolicy = multi_face
        self._matcher = matcher
        self._calibration = calibration
        self._card: ModelCard | None = None
        self._card_loaded = False
        self._milvus_uri = milvus_uri
        self._lock = threading.RLock()
        self._closed = False
        self._writer: WriterLock | None = None
        self._index: VectorIndex | None = None
        self._open_dir(create)
        try:
            self._store = Store(self.path / DB_FILE, read_only=read_only, synchronous=synchronous)
            self.backend: Backend = backend or self._stored_backend()
            self.index_config = index or self._stored_index_config()
            self._bind_requested_model(model, matcher)
            if not read_only:
                written = {"backend": self.backend, "index_config": json.dumps(self.index_config.to_dict())}
                if self._store.get_meta("gallery_id") is None:
                    written["gallery_id"] = uuid.uuid4().hex
                self._store.set_meta(written)
            tids, owners = self._store.template_owners()
            self._owners = TemplateOwners(tids, owners)
            self._n_identities = self._store.counts()[0]
            if self.dim is not None:
                self._index = self._open_index()
        except BaseException:
            self._release()
            raise

    @classmethod
    def open(cls, path: str | os.PathLike[str], **kwargs: Any) -> Gallery:
        """Open (or create) the gallery at ``path``. Keyword arguments as for :class:`Gallery`."""
        return cls(path, **kwargs)

    # ---- opening ---------------------------------------------------------------------------
    def _open_dir(self, create: bool) -> None:
        if self.path.exists() and not self.path.is_dir():
            raise GalleryError(f"{self.path} exists and is not a gallery directory")
        if not (self.path / DB_FILE).is_file():
            if self.read_only or not create:
                raise GalleryError(f"no gallery at {self.path}")
            self.path.mkdir(parents=True, exist_ok=True)
        if not self.read_only:
            self._writer = WriterLock(self.path)

    def _stored_backend(self) -> Backend:
        value = self._store.get_meta("backend") or "faiss"
        if value not in BACKENDS:
            raise GalleryError(f"gallery {self.path} names an unknown backend {value!r}")
        return value  # type: ignore[return-value]

    def _stored_index_config(self) -> IndexConfig:
        raw = self._store.get_meta("index_config")
        return IndexConfig.from_dict(json.loads(raw)) if raw else IndexConfig()

    @property
    def model_id(self) -> str | None:
        """Card id of the embedder this gallery is bound to (``None`` until bound)."""
        return self._store.get_meta("model_id")

    @property
    def dim(self) -> int | None:
        """Embedding dimension of the bound model (``None`` until bound)."""
        raw = self._store.get_meta("dim")
        return None if raw is None else int(raw)

    def _bind_requested_model(self, model: str | os.PathLike[str] | ModelCard | None, matcher: Any) -> None:
        if model is not None:
            card = load_card(model)
            if card.embedding is None:
                raise InvalidArgumentError(f"model {card.id!r} is not an embedding model")
            self._bind(card.id, card.embedding.dim)
            self._card, self._card_loaded = card, True
        if matcher is not None:
            self._bind(matcher.model_id, int(matcher.dim))

    def _bind(self, model_id: str, dim: int) -> None:
        """Check ``(model_id, dim)`` against the gallery's model, binding an unbound gallery."""
        bound_id, bound_dim = self.model_id, self.dim
        if bound_id is None:
            if self.read_only:
                return
            if not isinstance(model_id, str) or not model_id or dim < 1:
                raise InvalidArgumentError("a model id and a positive dimension are needed to bind the gallery")
            self._store.set_meta({"model_id": model_id, "dim": str(int(dim))})
            logger.info("gallery %s bound to model %s (dim %d)", self.path, model_id, dim)
            if self._index is None and not self._closed and hasattr(self, "_owners"):
                self._index = self._open_index()
            return
        if model_id != bound_id or int(dim) != bound_dim:
            raise ModelMismatchError(
                f"gallery {self.path} holds {bound_id!r} embeddings (dim {bound_dim}); got {model_id!r} (dim {dim})",
                gallery_model=bound_id,
                gallery_dim=bound_dim,
                model=model_id,
                dim=int(dim),
            )

    def _open_index(self) -> VectorIndex:
        dim = self.dim
        assert dim is not None
        index: VectorIndex | None
        if self.backend == "milvus":
            from .milvus import MilvusIndex, collection_name

            gallery_id = self._store.get_meta("gallery_id")
            if gallery_id is None:
                raise GalleryError(f"gallery {self.path} has no id yet; open it for writing once")
            index = MilvusIndex(
                dim,
                self.index_config,
                uri=self._milvus_uri or str(self.path / "milvus.db"),
                collection=collection_name(gallery_id),
                read_only=self.read_only,
            )
        else:
            index = FaissIndex.load(self.path, dim, self.index_config)
            if index is None:
                index = FaissIndex(dim, self.index_config, self.path)
        self._reconcile(index)
        return index

    def _reconcile(self, index: VectorIndex) -> bool:
        """Make ``index`` hold exactly the database's templates. Returns True if it changed."""
        dim = self.dim
        assert dim is not None
        db_ids = self._owners.template_ids
        idx_ids = index.ids()
        missing = np.setdiff1d(db_ids, idx_ids, assume_unique=True)
        extra = np.setdiff1d(idx_ids, db_ids, assume_unique=True)
        changed = bool(missing.size or extra.size)
        if self.read_only and index.shared:
            # another process owns this index (a Milvus collection): a reader never writes to it.
            # Templates it lacks are not found until the writer repairs it; extras are never
            # returned because search maps ids through the database.
            if changed:
                logger.warning(
                    "%s lacks %d and has %d extra templates against the database; the writer repairs it",
                    index.describe(),
                    missing.size,
                    extra.size,
                )
            return changed
        if changed and (missing.size + extra.size) > _REBUILD_FRACTION * max(db_ids.size, 1) and db_ids.size:
            logger.info("index disagrees with the database on %d templates; rebuilding", missing.size + extra.size)
            self._rebuild(index)
        elif changed:
            logger.info("repairing index: %d templates added, %d removed", missing.size, extra.size)
            index.remove(extra)
            for i in range(0, missing.size, 50_000):
                ids, vecs = self._store.embeddings(missing[i : i + 50_000].tolist(), dim)
                index.add(ids, vecs)
        if index.needs_rebuild:
            self._rebuild(index)
            changed = True
        if changed and not self.read_only:
            index.save()
        return changed

    def _rebuild(self, index: VectorIndex) -> None:
        dim = self.dim
        assert dim is not None
        parts = list(self._store.iter_embeddings(dim))
        ids = np.concatenate([p[0] for p in parts]) if parts else np.zeros((0,), np.int64)
        vecs = np.concatenate([p[1] for p in parts]) if parts else np.zeros((0, dim), np.float32)
        index.rebuild(ids, vecs)
        logger.info("index rebuilt from %d stored templates (%s)", ids.size, index.describe())

    # ---- model, matcher and calibration ----------------------------------------------------
    def _get_matcher(self) -> FaceMatcher:
        if self._matcher is None:
            from ..matcher import default_matcher

            self._matcher = default_matcher()
        self._bind(self._matcher.model_id, int(self._matcher.dim))
        return self._matcher

    @property
    def calibration(self) -> Calibration | None:
        """The impostor calibration used for FPIR thresholds and ``estimated_fmr``."""
        if self._calibration is not None:
            return self._calibration
        card = self._model_card()
        return card.calibration if card is not None else None

    def _model_card(self) -> ModelCard | None:
        if self._matcher is not None and self._matcher.model_id == self.model_id:
            return self._matcher.embedder_card
        if not self._card_loaded and self.model_id is not None:
            self._card_loaded = True
            try:
                card = load_card(self.model_id)
            except FacematchError as exc:
                logger.info("no card for %r (%s); FPIR thresholds need a calibration", self.model_id, exc)
                card = None
            if card is not None and (card.embedding is None or card.embedding.dim != self.dim):
                raise ModelMismatchError(f"card {card.id!r} does not describe {self.dim}-D embeddings")
            self._card = card
        return self._card

    # ---- writes ----------------------------------------------------------------------------
    def _check_writable(self) -> None:
        if self._closed:
            raise GalleryError("the gallery is closed")
        if self.read_only:
            raise GalleryError(f"gallery {self.path} is open read-only")

    def _check_embeddings(self, embeddings: Any, model_id: str | None) -> np.ndarray:
        """Validate a (n, dim) batch against the gallery's model; returns unit-norm float32."""
        try:
            arr = np.asarray(embeddings, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise InvalidArgumentError(f"embeddings must be a numeric array: {exc}") from exc
        if arr.ndim == 1:
            arr = arr[None, :]
        if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
            raise InvalidArgumentError(f"embeddings must have shape (n, dim) with n >= 1, got {arr.shape}")
        if model_id is None:
            if self.model_id is None:
                raise InvalidArgumentError("model_id is required: the gallery is not bound to a model yet")
            model_id = self.model_id
        self._bind(model_id, int(arr.shape[1]))
        if not np.all(np.isfinite(arr)):
            raise InvalidArgumentError("embeddings must be finite")
        norms = np.linalg.norm(arr, axis=1, keepdims=True)
        if np.any(norms < 1e-6):
            raise InvalidArgumentError("embeddings must not be zero vectors")
        return np.ascontiguousarray(arr / norms, dtype=np.float32)

    def _write_templates(
        self,
        identity_id: str,
        vectors: np.ndarray,
        sources: Sequence[str | None],
        *,
        create: bool,
        metadata: dict[str, Any] | None,
    ) -> builtins.list[int]:
        meta_json = dump_metadata(metadata) if create else None
        with self._lock:
            with self._store.transaction() as c:
                row = c.execute("SELECT id FROM identities WHERE name=?", (identity_id,)).fetchone()
                if create:
                    if row is not None:
                        raise DuplicateIdentityError(
                            f"identity {identity_id!r} already exists; use add_faces to add templates",
                            identity_id=identity_id,
                        )
                    assert meta_json is not None
                    rowid = Store.insert_identity(c, identity_id, meta_json)
                else:
                    if row is None:
                        raise IdentityNotFoundError(f"no identity {identity_id!r}", identity_id=identity_id)
                    rowid = int(row[0])
                tids = Store.insert_templates(c, rowid, vectors, sources) if len(vectors) else []
            # committed: the enrolment is durable from here on; the index follows
            if create:
                self._n_identities += 1
            self._owners.append(np.asarray(tids, np.int64), rowid)
            self._index_add(np.asarray(tids, np.int64), vectors)
        return tids

    def _index_add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if self._index is None or ids.size == 0:
            return
        self._index.add(ids, vectors)
        if self._index.needs_rebuild:
            self._rebuild(self._index)

    def enroll_embeddings(
        self,
        identity_id: str,
        embeddings: Any,
        model_id: str,
        *,
        metadata: dict[str, Any] | None = None,
        sources: Sequence[str | None] | None = None,
    ) -> EnrollReport:
        """Create ``identity_id`` with one template per row of ``embeddings`` ((n, dim) or (dim,)).

        Raises ``DuplicateIdentityError`` if it exists, ``ModelMismatchError`` when
        ``model_id``/dim differ from the gallery's model.
        """
        return self._enroll_vectors(identity_id, embeddings, model_id, metadata, sources, create=True)

    def add_embeddings(
        self, identity_id: str, embeddings: Any, model_id: str, *, sources: Sequence[str | None] | None = None
    ) -> EnrollReport:
        """Add templates to an existing identity (``IdentityNotFoundError`` otherwise)."""
        return self._enroll_vectors(identity_id, embeddings, model_id, None, sources, create=False)

    def _enroll_vectors(
        self,
        identity_id: str,
        embeddings: Any,
        model_id: str,
        metadata: dict[str, Any] | None,
        sources: Sequence[str | None] | None,
        *,
        create: bool,
    ) -> EnrollReport:
        self._check_writable()
        validate_identity_id(identity_id)
        vecs = self._check_embeddings(embeddings, model_id)
        labels = list(sources) if sources is not None else [f"#{i}" for i in range(len(vecs))]
        if len(labels) != len(vecs):
            raise InvalidArgumentError(f"{len(labels)} sources for {len(vecs)} embeddings")
        tids = self._write_templates(identity_id, vecs, labels, create=create, metadata=metadata)
        outcomes = tuple(
            ImageOutcome(index=i, source=str(labels[i]), status="enrolled", template_id=t, faces_found=1)
            for i, t in enumerate(tids)
        )
        return EnrollReport(identity_id=identity_id, outcomes=outcomes, created=create)

    def enroll(
        self,
        identity_id: str,
        images: Any,
        metadata: dict[str, Any] | None = None,
        *,
        aligned: bool = False,
        strict: bool = False,
        sources: Sequence[str] | None = None,
    ) -> EnrollReport:
        """Create ``identity_id`` from face images (paths, bytes, BGR arrays, PIL images).

        Each image gives one template; images without a usable face are reported in
        the returned report (``report.failed``). When no image gives a template, or
        ``strict=True`` and any image fails, nothing is written and ``NoFaceError`` /
        ``MultipleFacesError`` / ``InvalidImageError`` is raised with the report in
        ``details["report"]``. ``aligned=True`` takes the images as aligned 112x112 crops.
        ``sources`` names the images in the report (default: their paths, or ``#i``).
        """
        return self._enroll_images(
            identity_id, images, metadata, aligned=aligned, strict=strict, create=True, sources=sources
        )

    def add_faces(
        self,
        identity_id: str,
        images: Any,
        *,
        aligned: bool = False,
        strict: bool = False,
        sources: Sequence[str] | None = None,
    ) -> EnrollReport:
        """Add templates from face images to an existing identity (see :meth:`enroll`)."""
        return self._enroll_images(
            identity_id, images, None, aligned=aligned, strict=strict, create=False, sources=sources
        )

    def _enroll_images(
        self,
        identity_id: str,
        images: Any,
        metadata: dict[str, Any] | None,
        *,
        aligned: bool,
        strict: bool,
        create: bool,
        sources: Sequence[str] | None = None,
    ) -> EnrollReport:
        self._check_writable()
        validate_identity_id(identity_id)
        if metadata is not None:
            dump_metadata(metadata)
        items = _as_image_list(images)
        if not items:
            raise InvalidArgumentError("no images given")
        if sources is not None and (
            isinstance(sources, str) or len(sources) != len(items) or not all(isinstance(x, str) for x in sources)
        ):
            raise InvalidArgumentError(f"sources must be {len(items)} strings, one per image")
        exists = self._store.identity_rowid(identity_id) is not None
        if create and exists:
            raise DuplicateIdentityError(
                f"identity {identity_id!r} already exists; use add_faces", identity_id=identity_id
            )
        if not create and not exists:
            raise IdentityNotFoundError(f"no identity {identity_id!r}", identity_id=identity_id)
        matcher = self._get_matcher()
        outcomes: builtins.list[ImageOutcome] = []
        vectors: builtins.list[np.ndarray] = []
        for i, image in enumerate(items):
            label = sources[i] if sources is not None else _source_label(image, i)
            try:
                embs = matcher.embed(image, aligned=aligned, faces="all")
            except NoFaceError as exc:
                outcomes.append(ImageOutcome(i, label, "no_face", error=exc.message))
                continue
            except InvalidImageError as exc:
                outcomes.append(ImageOutcome(i, label, "invalid_image", error=exc.message))
                continue
            if len(embs) > 1 and self.multi_face == "reject":
                msg = f"{len(embs)} faces found; the gallery's multi-face policy is 'reject'"
                outcomes.append(ImageOutcome(i, label, "multiple_faces", faces_found=len(embs), error=msg))
                continue
            chosen = embs[0]  # largest first
            outcomes.append(ImageOutcome(i, label, "enrolled", face=chosen.face, faces_found=len(embs)))
            vectors.append(chosen.vector)
        report = EnrollReport(identity_id=identity_id, outcomes=tuple(outcomes), created=create)
        if not vectors or (strict and report.failed):
            self._raise_for(replace(report, created=False))  # nothing was written
        vecs = self._check_embeddings(np.stack(vectors), matcher.model_id)
        ok = [o for o in outcomes if o.ok]
        tids = self._write_templates(identity_id, vecs, [o.source for o in ok], create=create, metadata=metadata)
        tid_of = {o.index: t for o, t in zip(ok, tids, strict=True)}
        final = tuple(replace(o, template_id=tid_of[o.index]) if o.ok else o for o in outcomes)
        return EnrollReport(identity_id=identity_id, outcomes=final, created=create)

    @staticmethod
    def _raise_for(report: EnrollReport) -> None:
        failed = report.failed
        summary = "; ".join(f"{o.source}: {o.status}" for o in failed)
        statuses = {o.status for o in failed}
        details = {"report": report.to_dict(), "identity_id": report.identity_id}
        msg = f"nothing enrolled for {report.identity_id!r}: {summary}"
        if "no_face" in statuses:
            raise NoFaceError(msg, **details)
        if "multiple_faces" in statuses:
            raise MultipleFacesError(msg, **details)
        raise InvalidImageError(msg, **details)

    def remove_template(self, template_id: int) -> str:
        """Remove one template; returns the identity it belonged to (which is kept, even if empty)."""
        self._check_writable()
        if not isinstance(template_id, numbers.Integral) or isinstance(template_id, bool):
            raise InvalidArgumentError(f"a template id is an integer, got {template_id!r}")
        with self._lock:
            found = self._store.template_identity(int(template_id))
            if found is None:
                raise TemplateNotFoundError(f"no template {template_id}", template_id=int(template_id))
            with self._store.transaction() as c:
                c.execute("DELETE FROM templates WHERE id=?", (int(template_id),))
            ids = np.asarray([int(template_id)], np.int64)
            self._owners.remove(ids)
            if self._index is not None:
                self._index.remove(ids)
        return found[1]

    def delete(self, identity_id: str) -> IdentityInfo:
        """Delete an identity and all its templates; returns what was deleted."""
        self._check_writable()
        with self._lock:
            info = self._store.get_identity(identity_id)
            if info is None:
                raise IdentityNotFoundError(f"no identity {identity_id!r}", identity_id=identity_id)
            with self._store.transaction() as c:
                c.execute("DELETE FROM identities WHERE name=?", (identity_id,))  # templates cascade
            ids = np.asarray(info.template_ids, np.int64)
            self._n_identities -= 1
            self._owners.remove(ids)
            if self._index is not None:
                self._index.remove(ids)
                if self._index.needs_rebuild:
                    self._rebuild(self._index)
        return info

    def set_metadata(self, identity_id: str, metadata: dict[str, Any]) -> IdentityInfo:
        """Replace an identity's metadata."""
        self._check_writable()
        text = dump_metadata(metadata)
        with self._lock, self._store.transaction() as c:
            cur = c.execute(
                "UPDATE identities SET metadata=?, updated_at=? WHERE name=?", (text, time.time(), identity_id)
            )
            if cur.rowcount == 0:
                raise IdentityNotFoundError(f"no identity {identity_id!r}", identity_id=identity_id)
        return self.get(identity_id)

    # ---- reads -----------------------------------------------------------------------------
    def get(self, identity_id: str) -> IdentityInfo:
        """One identity (``IdentityNotFoundError`` when absent)."""
        info = self._store.get_identity(identity_id)
        if info is None:
            raise IdentityNotFoundError(f"no identity {identity_id!r}", identity_id=identity_id)
        return info

    def list(self, limit: int = 50, cursor: str | None = None) -> Page:
        """Identities ordered by id, ``limit`` per page; pass ``page.next_cursor`` for the next page."""
        if not isinstance(limit, int) or not (1 <= limit <= 1000):
            raise InvalidArgumentError("limit must be an integer in [1, 1000]")
        after = decode_cursor(cursor) if cursor else None
        items = self._store.list_identities(after, limit + 1)
        more = len(items) > limit
        items = items[:limit]
        return Page(items=tuple(items), next_cursor=encode_cursor(items[-1].identity_id) if more else None)

    def __len__(self) -> int:
        return self._n_identities

    def __contains__(self, identity_id: object) -> bool:
        return isinstance(identity_id, str) and self._store.identity_rowid(identity_id) is not None

    @property
    def num_templates(self) -> int:
        return len(self._owners)

    def info(self) -> GalleryInfo:
        try:
            calibrated = self.calibration is not None
        except FacematchError:
            calibrated = False
        return GalleryInfo(
            path=str(self.path),
            model_id=self.model_id,
            dim=self.dim,
            identities=self._n_identities,
            templates=len(self._owners),
            backend=self.backend,
            index=self._index.describe() if self._index is not None else "none (no model bound yet)",
            read_only=self.read_only,
            calibrated=calibrated,
        )

    # ---- identification --------------------------------------------------------------------
    def resolve_threshold(
        self, threshold: float | None = None, fpir: float | None = None
    ) -> tuple[float, float | None]:
        """(threshold, target FPIR or None) for the current gallery size.

        With neither given, the gallery's ``default_fpir`` is used; FPIR needs a calibration
        (the embedder card's, or the one given to the gallery) or raises ``CalibrationMissingError``.
        """
        if threshold is not None and fpir is not None:
            raise InvalidArgumentError("give either threshold or fpir, not both")
        if threshold is not None:
            if isinstance(threshold, bool) or not math.isfinite(float(threshold)) or not -1.0 <= threshold <= 1.0:
                raise InvalidArgumentError(f"threshold must be a cosine similarity in [-1, 1], got {threshold}")
            return float(threshold), None
        target = self.default_fpir if fpir is None else float(fpir)
        cal = self.calibration
        if cal is None:
            raise CalibrationMissingError(
                f"model {self.model_id!r} has no impostor calibration; pass threshold= or calibrate the model card"
            )
        return threshold_for_fpir(cal, target, self._fpir_comparisons()), target

    def _fpir_comparisons(self) -> int:
        """How many comparisons an identification makes, for FPIR → FMR: the template count."""
        return max(len(self._owners), 1)

    def identify(
        self,
        image: Any,
        *,
        k: int = 5,
        threshold: float | None = None,
        fpir: float | None = None,
        aligned: bool = False,
    ) -> IdentifyResult:
        """Identify the face in an image (the largest one; ``multi_face="reject"`` refuses several)."""
        return self.identify_batch([image], k=k, threshold=threshold, fpir=fpir, aligned=aligned)[0]

    def identify_batch(
        self,
        images: Sequence[Any],
        *,
        k: int = 5,
        threshold: float | None = None,
        fpir: float | None = None,
        aligned: bool = False,
    ) -> builtins.list[IdentifyResult]:
        """Identify many images with one index search.

        All images are checked before the search: the first one without a usable face raises
        its error (``NoFaceError``, ``InvalidImageError``, ...) naming it, with
        ``details["index"]`` and ``details["source"]``.
        """
        items = _as_image_list(images)
        if not items:
            return []
        matcher = self._get_matcher()
        policy: Literal["largest", "reject"] = "reject" if self.multi_face == "reject" else "largest"
        embs = []
        for i, img in enumerate(items):
            try:
                embs.append(matcher.embed(img, aligned=aligned, faces=policy)[0])
            except FacematchError as exc:
                source = _source_label(img, i)
                raise type(exc)(
                    f"image {source}: {exc.message}", **{**exc.details, "index": i, "source": source}
                ) from exc
        results = self.identify_embeddings(
            np.stack([e.vector for e in embs]), matcher.model_id, k=k, threshold=threshold, fpir=fpir
        )
        return [replace(r, face=e.face) for r, e in zip(results, embs, strict=True)]

    def identify_embeddings(
        self,
        embeddings: Any,
        model_id: str | None = None,
        *,
        k: int = 5,
        threshold: float | None = None,
        fpir: float | None = None,
        aggregation: Aggregation | None = None,
    ) -> builtins.list[IdentifyResult]:
        """Open-set identification of probe embeddings ``(q, dim)``: one result per probe."""
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
            raise InvalidArgumentError(f"k must be an integer in [1, {MAX_K}]")
        method = aggregation or self.aggregation
        if method not in AGGREGATIONS:
            raise InvalidArgumentError(f"aggregation must be one of {AGGREGATIONS}")
        if self._closed:
            raise GalleryError("the gallery is closed")
        with self._lock:
            if self.model_id is None:
                if embeddings is None or np.asarray(embeddings).size == 0:
                    raise InvalidArgumentError("no probe embeddings given")
                thr, target = self.resolve_threshold(threshold, fpir)
                n_probes = 1 if np.asarray(embeddings).ndim == 1 else len(embeddings)
                return [IdentifyResult((), thr, True, target_fpir=target, gallery_size=0)] * n_probes
            q = self._check_embeddings(embeddings, model_id)
            thr, target = self.resolve_threshold(threshold, fpir)
            n_templates = self._fpir_comparisons()
            ranked = self._search(q, k, method)
            names = self._store.identities_by_rowid([r for rows in ranked for r, _, _ in rows])
        cal = self.calibration
        extrapolated = target is not None and cal is not None and needs_extrapolation(cal, target, n_templates)
        out = []
        for rows in ranked:
            sims = np.asarray([s for _, s, _ in rows], np.float64)
            fmrs = np.atleast_1d(cal.fmr_at(sims)) if (cal is not None and sims.size) else None
            cands = tuple(
                Candidate(
                    identity_id=names[r][0],
                    similarity=float(s),
                    estimated_fmr=float(fmrs[j]) if fmrs is not None else None,
                    template_id=int(t),
                    metadata=names[r][1],
                )
                for j, (r, s, t) in enumerate(rows)
                if r in names
            )
            unknown = not cands or cands[0].similarity < thr
            out.append(
                IdentifyResult(
                    candidates=cands,
                    threshold=thr,
                    is_unknown=unknown,
                    target_fpir=target,
                    gallery_size=self._n_identities,
                    threshold_extrapolated=extrapolated,
                )
            )
        return out

    def _search(self, q: np.ndarray, k: int, method: Aggregation) -> builtins.list[_Ranked]:
        """Per probe: up to ``k`` (identity rowid, aggregated similarity, best template id), ranked."""
        index = self._index
        n_templates = len(self._owners)
        if index is None or n_templates == 0:
            return [[] for _ in range(q.shape[0])]
        per_identity = max(1.0, n_templates / max(self._n_identities, 1))
        want = k if method == "max" else max(2 * k, 10)  # identities in the shortlist
        fetch = min(n_templates, math.ceil(want * per_identity * 2) + 16)
        if self.index_config.rerank:
            fetch = min(n_templates, fetch * self.index_config.rerank_factor)
        scores, tids = index.search(q, fetch)
        exact: dict[int, np.ndarray] = {}
        if self.index_config.rerank:
            exact = self._exact_embeddings(np.unique(tids[tids >= 0]))
        out = []
        for r in range(q.shape[0]):
            s, t = scores[r], tids[r]
            f = fetch
            while True:
                valid = t >= 0
                s_v, t_v = s[valid], t[valid]
                owners = self._owners.lookup(t_v)
                known = owners >= 0
                s_v, t_v, owners = s_v[known], t_v[known], owners[known]
                if np.unique(owners).size >= want or f >= n_templates:
                    break
                f = min(n_templates, f * 4)  # one identity dominated the shortlist: widen it
                s2, t2 = index.search(q[r : r + 1], f)
                s, t = s2[0], t2[0]
                if self.index_config.rerank:
                    exact.update(self._exact_embeddings(np.setdiff1d(t[t >= 0], np.fromiter(exact, np.int64))))
            if self.index_config.rerank and t_v.size:
                s_v = np.stack([exact[int(x)] for x in t_v]) @ q[r]
            if method == "max":
                ident, agg, best = aggregate(owners, s_v, t_v, "max")
            else:
                shortlist = aggregate(owners, s_v, t_v, "max")[0][:want]
                all_t, all_o, all_v = self._store.embeddings_of_identities(shortlist.tolist(), q.shape[1])
                ident, agg, best = aggregate(all_o, all_v @ q[r], all_t, method, self.aggregation_top_k)
            out.append([(int(i), float(a), int(b)) for i, a, b in zip(ident[:k], agg[:k], best[:k], strict=True)])
        return out

    def _exact_embeddings(self, tids: np.ndarray) -> dict[int, np.ndarray]:
        dim = self.dim
        assert dim is not None
        ids, vecs = self._store.embeddings(tids.tolist(), dim)
        return {int(i): v for i, v in zip(ids, vecs, strict=True)}

    # ---- maintenance -----------------------------------------------------------------------
    def refresh(self) -> bool:
        """Pick up changes another process committed (for read-only handles). True if any."""
        with self._lock:
            tids, owners = self._store.template_owners()
            self._owners = TemplateOwners(tids, owners)
            self._n_identities = self._store.counts()[0]
            if self._index is None and self.dim is not None:
                self._index = self._open_index()
                return True
            return self._reconcile(self._index) if self._index is not None else False

    def rebuild_index(self) -> None:
        """Rebuild (and retrain) the index from the stored fp32 embeddings, and save it."""
        self._check_writable()
        with self._lock:
            if self._index is not None:
                self._rebuild(self._index)
                self._index.save()

    def save(self) -> None:
        """Persist the derived index beside the database (also done by :meth:`close`)."""
        self._check_writable()
        with self._lock:
            if self._index is not None:
                self._index.save()

    def verify_consistency(self) -> tuple[int, int]:
        """(templates in the database, templates in the index); raises if their id sets differ."""
        from ..errors import GalleryCorruptError

        with self._lock:
            tids, _ = self._store.template_owners()
            idx = self._index.ids() if self._index is not None else np.zeros((0,), np.int64)
            if not np.array_equal(np.sort(tids), np.sort(idx)):
                raise GalleryCorruptError(f"index holds {idx.size} templates, the database {tids.size}")
            return int(tids.size), int(idx.size)

    def close(self) -> None:
        """Save the index (writers) and release the files. Idempotent."""
        if self._closed:
            return
        with self._lock:
            try:
                if not self.read_only and self._index is not None:
                    self._index.save()
            finally:
                self._release()

    def _release(self) -> None:
        self._closed = True
        if self._index is not None:
            self._index.close()
        store = getattr(self, "_store", None)
        if store is not None:
            store.close()
        if self._writer is not None:
            self._writer.release()
            self._writer = None

    def __enter__(self) -> Gallery:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Gallery({str(self.path)!r}, model={self.model_id!r}, identities={self._n_identities})"


__all__ = ["BACKENDS", "DB_FILE", "DEFAULT_FPIR", "Gallery"]
