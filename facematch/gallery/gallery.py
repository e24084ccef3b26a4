"""The gallery: enrol identities (several face templates each) and identify probes, open-set.

    g = Gallery.open("people.fmg")
    report = g.enroll("alice", ["a1.jpg", "a2.jpg"], metadata={"team": "red"})
    hits = g.identify("probe.jpg", k=5)     # IdentifyResult: ranked identities, or is_unknown
    g.verify("alice", "probe.jpg")          # IdentityVerifyResult: 1:1 against one enrolled identity
    g.delete("alice"); page = g.list_identities(limit=50, cursor=page.next_cursor)

A gallery is a directory: ``gallery.sqlite3`` (the source of truth, WAL mode), the
derived FAISS index (``index.faiss`` + ``index.json``) and ``writer.lock``. Or it lives in
PostgreSQL, shared by any number of processes (server replicas)::

    g = Gallery.open("postgresql://facematch@db.internal/faces")   # or Gallery(catalog_uri=...)

each keeping its own FAISS index in memory (built from the database on open, then kept
current from the database's change log: ``changes.py``), or all sharing one Milvus
collection (``backend="milvus", milvus_uri=...``).

:class:`Gallery` is the public facade: opening, the writes that are not enrolment,
reads and maintenance are here; its enrolment methods come from ``enrol.py``
(:class:`~facematch.gallery.enrol.Enrolment`) and its identification methods from
``search.py`` (:class:`~facematch.gallery.search.Identification`), its 1:1 methods from
``verify.py`` (:class:`~facematch.gallery.verify.Verification`), export and import from
``portable.py`` (:class:`~facematch.gallery.portable.Portability`) and bulk enrolment from
``bulk.py``. The other jobs:
``store.py`` (the :class:`~facematch.gallery.store.Store` interface; every SQL
statement is in ``sqlite_store.py``), ``sync.py`` (the derived index kept equal to the
store) and ``binding.py`` (the model binding and the embedding checks).
"""

from __future__ import annotations

import functools
import json
import logging
import numbers
import os
import threading
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ..calibration import Calibration, check_rate
from ..cards import ModelCard
from ..errors import FacematchError, GalleryError, InvalidArgumentError
from ..quality import ENROLMENT_POLICY, QualityPolicy
from .binding import ModelBinding
from .changes import DEFAULT_POLL_S, Change, ChangeFeed, ChangeFollower, ChangeKind, ChangeLogStore, OwnWrite
from .config import Aggregation, IndexConfig
from .enrol import MULTI_FACE_POLICIES, Enrolment, MultiFacePolicy
from .index import VectorIndex
from .lock import WriterLock
from .openset import check_aggregation
from .portable import Portability
from .postgres_store import DEFAULT_POOL_SIZE, is_postgres_uri, mask_uri
from .search import Identification
from .sqlite_store import SQLiteStore, Synchronous
from .store import Store, decode_cursor, encode_cursor, identity_not_found, validate_identity_id
from .sync import IndexSync
from .types import BulkEnrollReport, GalleryInfo, IdentityInfo, Page
from .verify import Verification

if TYPE_CHECKING:
    from ..matcher import FaceMatcher

logger = logging.getLogger(__name__)

DB_FILE = "gallery.sqlite3"
BACKENDS = ("faiss", "milvus")
DEFAULT_FPIR = 0.01

Backend = Literal["faiss", "milvus"]


class Gallery(Enrolment, Identification, Verification, Portability):
    """A persistent, model-bound face gallery with open-set identification.

    Args:
        path: the gallery directory (created when absent unless ``create=False``), or a
            ``postgresql://`` URI (the same as ``catalog_uri=``).
        catalog_uri: a PostgreSQL URI: the gallery lives in that database, shared by every
            process that opens it (credentials in the URI or from libpq's environment,
            ``~/.pgpass`` or a service file; the password is never logged).
        backend: ``"faiss"`` (embedded, default) or ``"milvus"`` (``pymilvus``; milvus-lite
            file inside the gallery, or a server at ``milvus_uri``, which a PostgreSQL
            gallery needs). Defaults to the backend the gallery was created with.
        index: FAISS index structure (an explicit one wins, and is stored); defaults to the
            one stored with the gallery, and for a new gallery to ``IndexConfig.auto()``:
            exact flat search while small, IVF-SQ8 with an exact re-rank once large (the
            structure in use and why are recorded in the gallery's ``index_choice`` setting).
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
        poll_s: PostgreSQL galleries: check the change log at least this often (seconds) when
            no notification arrives; bounds how stale this process's index can get.
        listen: PostgreSQL galleries: wake on ``LISTEN``/``NOTIFY`` (False: poll only, e.g.
            behind a connection pooler in transaction mode).
        pool_size: PostgreSQL galleries: the most database connections this handle opens.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        catalog_uri: str | None = None,
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
        poll_s: float = DEFAULT_POLL_S,
        listen: bool = True,
        pool_size: int = DEFAULT_POOL_SIZE,
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
        uri = _catalog_uri(path, catalog_uri)
        if uri is not None and backend == "milvus" and milvus_uri is None:
            raise InvalidArgumentError("the Milvus backend of a PostgreSQL gallery needs milvus_uri (a Milvus server)")
        if not isinstance(poll_s, (int, float)) or isinstance(poll_s, bool) or not 0 < poll_s <= 3600:
            raise InvalidArgumentError(f"poll_s must be a number of seconds in (0, 3600], got {poll_s!r}")
        self.path: Path | None = None if uri is not None else Path(path).expanduser()  # type: ignore[arg-type]
        self.location = mask_uri(uri) if uri is not None else str(self.path)
        self.read_only = read_only
        self.aggregation: Aggregation = aggregation
        self.aggregation_top_k = aggregation_top_k
        self.default_fpir = check_rate(default_fpir, "default_fpir")
        self.multi_face: MultiFacePolicy = multi_face
        self._lock = threading.RLock()
        self._closed = False
        self._writer: WriterLock | None = None
        self._feed: ChangeFeed | None = None
        self._follower: ChangeFollower | None = None
        if self.path is not None:
            self._open_dir(create)
        try:
            self._store: Store
            if self.path is not None:
                self._store = SQLiteStore(self.path / DB_FILE, read_only=read_only, synchronous=synchronous)
            else:
                from .postgres_store import PostgresStore

                assert uri is not None
                self._store = PostgresStore(uri, read_only=read_only, create=create, pool_size=pool_size)
            self.backend: Backend = backend or self._stored_backend()
            self.index_config = index or self._stored_index_config()
            self._model = ModelBinding(
                self._store, path=self.location, read_only=read_only, matcher=matcher, calibration=calibration
            )
            self._model.bind_requested(model, matcher)
            self._model.on_bound = self._on_bound
            if not read_only:
                self._store.set_meta({"backend": self.backend, "index_config": json.dumps(self.index_config.to_dict())})
                self._store.init_meta({"gallery_id": uuid.uuid4().hex})
            if isinstance(self._store, ChangeLogStore):
                # the log position first: whatever commits while the index is built is applied after
                self._feed = ChangeFeed(self._store, self._lock)
            self._sync: IndexSync = IndexSync(
                self._store,
                path=self.path,
                backend=self.backend,
                config=self.index_config,
                read_only=read_only,
                milvus_uri=milvus_uri,
                lock=self._lock,
            )
            if self._feed is None:
                self._n_identities = self._store.counts()[0]
            if self.dim is not None:
                self._sync.open(self.dim)
            if self._feed is not None:
                self._follow(quiet=False)
                self._follower = ChangeFollower(
                    self._feed.store,
                    functools.partial(self._follow, quiet=False),
                    poll_s=poll_s,
                    listen=listen,
                    name="facematch-gallery-changes",
                )
                self._follower.start()
        except BaseException:
            self._release()
            raise

    @classmethod
    def open(cls, path: str | os.PathLike[str] | None = None, **kwargs: Any) -> Gallery:
        """Open (or create) the gallery at ``path`` (a directory or a ``postgresql://`` URI).

        Keyword arguments as for :class:`Gallery`.
        """
        return cls(path, **kwargs)

    # ---- opening and the model binding -------------------------------------------------------
    def _open_dir(self, create: bool) -> None:
        assert self.path is not None
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
            raise GalleryError(f"gallery {self.location} names an unknown backend {value!r}")
        return value  # type: ignore[return-value]

    def _stored_index_config(self) -> IndexConfig:
        raw = self._store.get_meta("index_config")
        return IndexConfig.from_dict(json.loads(raw)) if raw else IndexConfig.auto()

    @property
    def model_id(self) -> str | None:
        """Card id of the embedder this gallery is bound to (``None`` until bound)."""
        return self._model.model_id

    @property
    def dim(self) -> int | None:
        """Embedding dimension of the bound model (``None`` until bound)."""
        return self._model.dim

    @property
    def calibration(self) -> Calibration | None:
        """The impostor calibration used for FPIR thresholds and ``estimated_fmr``."""
        return self._model.calibration

    @property
    def _index(self) -> VectorIndex | None:
        sync: IndexSync | None = getattr(self, "_sync", None)
        return sync.index if sync is not None else None

    def _on_bound(self, dim: int) -> None:
        with self._lock:  # a follower thread may open it at the same moment
            if self._sync.index is None and not self._closed:
                self._sync.open(dim)

    # ---- a shared store: following its change log -----------------------------------------------
    def _follow(
        self,
        own: OwnWrite | None = None,
        *,
        removed: np.ndarray | None = None,
        quiet: bool = True,
    ) -> bool:
        """Apply what the store's change log holds beyond this handle's position. True if anything changed.

        After this process's own commit (``own`` / ``removed``) a shared index (Milvus) is
        written first. ``quiet``: a failure to read the log is logged, not raised (the
        write is committed; the follower thread catches up when the database answers).
        """
        feed, sync = self._feed, self._sync
        assert feed is not None
        if self._closed:
            return False
        try:
            if own is not None or removed is not None:
                with self._lock:
                    empty = np.zeros((0,), np.int64)
                    added = own.template_ids if own is not None else empty
                    vectors = own.vectors if own is not None else np.zeros((0, self.dim or 0), np.float32)
                    sync.write_shared(added, vectors, removed if removed is not None else empty)
            changed = feed.catch_up(sync, own)
            with self._lock:
                self._n_identities = feed.identities
                if sync.index is None and not self._closed and self.dim is not None:
                    sync.open(self.dim)  # another process bound the gallery to its model
                    changed = True
            return changed
        except FacematchError as exc:
            if not quiet:
                raise
            logger.warning("catching up with %s failed (the follower retries): %s", self.location, exc.message)
            return False

    # ---- writes ----------------------------------------------------------------------------
    def _check_open(self) -> IndexSync:
        if self._closed:
            raise GalleryError("the gallery is closed")
        return self._sync

    def _check_writable(self) -> IndexSync:
        sync = self._check_open()
        if self.read_only:
            raise GalleryError(f"gallery {self.path} is open read-only")
        return sync

    def _write_templates(
        self,
        identity_id: str,
        vectors: np.ndarray,
        sources: Sequence[str | None],
        *,
        create: bool,
        metadata: dict[str, Any] | None,
    ) -> tuple[int, ...]:
        """One store transaction (duplicate / not-found re-checked inside it), then the index follows."""
        sync = self._check_writable()
        if self._feed is not None:  # a shared store: write, then apply the log (own write included) in order
            if create:
                written = self._store.create_identity(identity_id, vectors, sources, metadata=metadata)
            else:
                written = self._store.add_templates(identity_id, vectors, sources)
            tids = np.asarray(written.template_ids, np.int64)
            change = None
            if written.seq is not None:
                kind: ChangeKind = "identity_created" if create else "templates_added"
                change = Change(written.seq, kind, written.identity_key, written.template_ids)
            self._follow(OwnWrite(tids, vectors, change))
            return written.template_ids
        with self._lock:
            if create:
                written = self._store.create_identity(identity_id, vectors, sources, metadata=metadata)
                self._n_identities += 1
            else:
                written = self._store.add_templates(identity_id, vectors, sources)
            # committed: the enrolment is durable from here on; the index follows
            sync.added(np.asarray(written.template_ids, np.int64), written.identity_key, vectors)
        return written.template_ids

    def remove_template(self, template_id: int) -> str:
        """Remove one template; returns the identity it belonged to (which is kept, even if empty)."""
        sync = self._check_writable()
        if not isinstance(template_id, numbers.Integral) or isinstance(template_id, bool):
            raise InvalidArgumentError(f"a template id is an integer, got {template_id!r}")
        if self._feed is not None:
            identity_id = self._store.delete_template(int(template_id))
            self._follow(removed=np.asarray([int(template_id)], np.int64))
            return identity_id
        with self._lock:
            identity_id = self._store.delete_template(int(template_id))
            sync.removed(np.asarray([int(template_id)], np.int64))
        return identity_id

    def delete(self, identity_id: str) -> IdentityInfo:
        """Delete an identity and all its templates; returns what was deleted."""
        sync = self._check_writable()
        identity_id = validate_identity_id(identity_id)
        if self._feed is not None:
            info = self._store.delete_identity(identity_id)
            self._follow(removed=np.asarray(info.template_ids, np.int64))
            return info
        with self._lock:
            info = self._store.delete_identity(identity_id)
            self._n_identities -= 1
            sync.removed(np.asarray(info.template_ids, np.int64))
        return info

    def set_metadata(self, identity_id: str, metadata: dict[str, Any]) -> IdentityInfo:
        """Replace an identity's metadata."""
        self._check_writable()
        identity_id = validate_identity_id(identity_id)
        if self._feed is not None:
            info = self._store.set_metadata(identity_id, metadata)
            self._follow()
            return info
        with self._lock:
            return self._store.set_metadata(identity_id, metadata)

    def enroll_bulk(
        self,
        source: str | os.PathLike[str],
        *,
        aligned: bool = False,
        report_path: str | os.PathLike[str] | None = None,
        progress: Callable[[int, int], None] | None = None,
        quality: QualityPolicy | None = ENROLMENT_POLICY,
    ) -> BulkEnrollReport:
        """Enrol a folder (one sub-folder per identity) or a CSV (``identity,path[,metadata]``).

        Re-runs skip what is already enrolled; faces below the ``quality`` policy (default: the
        strict enrolment one; ``None`` for none) are ``low_quality`` outcomes. See
        :func:`facematch.gallery.bulk.enroll_bulk`.
        """
        from .bulk import enroll_bulk

        return enroll_bulk(self, source, aligned=aligned, report_path=report_path, progress=progress, quality=quality)

    # ---- reads -----------------------------------------------------------------------------
    def get(self, identity_id: str) -> IdentityInfo:
        """One identity (``IdentityNotFoundError`` when absent)."""
        identity_id = validate_identity_id(identity_id)
        info = self._store.get_identity(identity_id)
        if info is None:
            raise identity_not_found(identity_id)
        return info

    def template_sources(self, identity_id: str) -> dict[int, str | None]:
        """Template id -> the source each template of the identity was enrolled from (file name, path or ``#i``)."""
        return self._store.template_sources(self.get(identity_id).template_ids)

    @property
    def matcher(self) -> FaceMatcher:
        """The FaceMatcher used for image inputs (the default one on first use), checked against the binding."""
        return self._model.matcher()

    def list_identities(self, limit: int = 50, cursor: str | None = None) -> Page:
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
        try:
            return self._store.identity_key(validate_identity_id(identity_id)) is not None
        except InvalidArgumentError:
            return False

    @property
    def num_templates(self) -> int:
        return len(self._sync.owners)

    def info(self) -> GalleryInfo:
        try:
            calibrated = self.calibration is not None
        except FacematchError:
            calibrated = False
        return GalleryInfo(
            path=self.location,
            model_id=self.model_id,
            dim=self.dim,
            identities=self._n_identities,
            templates=self.num_templates,
            backend=self.backend,
            index=self._sync.describe(),
            read_only=self.read_only,
            calibrated=calibrated,
        )

    # ---- maintenance -----------------------------------------------------------------------
    def refresh(self) -> bool:
        """Pick up changes another process committed (for read-only handles). True if any.

        A PostgreSQL gallery follows its change log by itself (a background thread); this
        catches up at once, e.g. to read a write another process just acknowledged.
        """
        sync = self._check_open()
        if self._feed is not None:
            return self._follow(quiet=False)
        with self._lock:
            self._n_identities = self._store.counts()[0]
            changed = sync.reload()
            if sync.index is None and self.dim is not None:
                sync.open(self.dim)  # another process bound the gallery
                return True
            return changed

    def rebuild_index(self) -> None:
        """Rebuild (and retrain) the index from the stored fp32 embeddings, and save it."""
        sync = self._check_writable()
        with self._lock:
            sync.rebuild()
            sync.save()

    def wait_for_retrain(self, timeout: float | None = None) -> bool:
        """Wait for a background index retrain (as the gallery grows) to finish; True when none runs.

        Retraining never blocks enrolment or search: the old index serves until the new one
        has caught up with the writes made meanwhile and is swapped in.
        """
        return self._check_open().wait_retrain(timeout)

    def save(self) -> None:
        """Persist the derived index beside the database (also done by :meth:`close`)."""
        sync = self._check_writable()
        with self._lock:
            sync.save()

    def verify_consistency(self) -> tuple[int, int]:
        """(templates in the database, templates in the index); raises if their id sets differ.

        A shared (PostgreSQL) gallery catches up first; other processes writing meanwhile
        can make the two differ for a moment.
        """
        sync = self._check_open()
        if self._feed is not None:
            self._follow(quiet=False)
        with self._lock:
            return sync.verify()

    def close(self) -> None:
        """Save the index (writers) and release the files (or the database connections). Idempotent."""
        if self._closed:
            return
        if self._follower is not None:
            self._follower.close()  # before taking the lock: the follower takes it to apply changes
        with self._lock:
            try:
                if not self.read_only:
                    self._sync.save()
            finally:
                self._release()

    def _release(self) -> None:
        self._closed = True
        if self._follower is not None:
            self._follower.close()
        sync: IndexSync | None = getattr(self, "_sync", None)
        if sync is not None:
            sync.close()
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
        try:
            model = repr(self.model_id)
        except FacematchError:  # a database that is down right now
            model = "?"
        return f"Gallery({self.location!r}, model={model}, identities={self._n_identities})"


def _catalog_uri(path: str | os.PathLike[str] | None, catalog_uri: str | None) -> str | None:
    """The PostgreSQL URI of the gallery (``None``: a directory), checked."""
    if catalog_uri is not None:
        if path is not None:
            raise InvalidArgumentError("give a gallery directory or a catalog_uri, not both")
        if not is_postgres_uri(catalog_uri):
            raise InvalidArgumentError(f"catalog_uri must be a postgresql:// URI, got {mask_uri(str(catalog_uri))!r}")
        return catalog_uri
    if path is None:
        raise InvalidArgumentError("a gallery needs a directory or a catalog_uri")
    return path if is_postgres_uri(path) else None  # type: ignore[return-value]


__all__ = ["BACKENDS", "DB_FILE", "DEFAULT_FPIR", "Gallery"]
