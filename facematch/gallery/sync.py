"""The derived index, kept in step with the store: opening it, reconciling, rebuilding, retraining.

The store holds every template's fp32 embedding; the vector index (FAISS files beside
the database, or a Milvus collection) is derived from it and can always be rebuilt.
:class:`IndexSync` owns the index and the in-memory template → identity map
(:class:`TemplateOwners`), follows each committed write, and on open (or ``refresh``)
makes the index hold exactly the store's templates: a small disagreement is repaired by
delta, a large one (or a damaged file, or another structure) by a full rebuild.

Retraining as the gallery grows (the first training at ``min_train``, more IVF lists
about every 4x growth, HNSW compaction) happens off the write path: a background thread
builds the new index from the store's embeddings of the templates present when it
started, while the old index keeps serving and every write is applied to it and logged;
the thread then replays the log onto the new index (outside the lock, until little is
left), and swaps it in under the gallery's lock. The store stays the only truth: a crash
or a close mid-retrain loses nothing (the next open reconciles the saved index).

A gallery whose store is shared by several processes (PostgreSQL) has no directory: its
FAISS index lives in memory only, is built from the store on open, and follows the
store's change log (:meth:`IndexSync.follow`, fed by :mod:`~facematch.gallery.changes`).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..errors import GalleryCorruptError, GalleryError, InvalidArgumentError
from .config import IndexConfig
from .index import FaissIndex, VectorIndex, import_faiss
from .owners import TemplateOwners
from .retrain import RetrainChildError, WriteLog, build_in_child
from .sqlite_store import SQLiteStore
from .store import Store
from .threads import cores, faiss_threads

logger = logging.getLogger(__name__)

REBUILD_FRACTION = 0.5  # repair by delta below this much disagreement, rebuild above
_BATCH = 50_000
RETRAIN_BATCH = 2048  # rows per store read in a background retrain (each read holds the store's lock briefly)
SWAP_CATCHUP = 256  # writes left to replay when the background retrain takes the lock to swap
RETRY_AFTER_S = 60
CHOICE_KEY = "index_choice"  # store setting: the structure in use, and why


class IndexSync:
    """The gallery's derived vector index and template owners, kept equal to the store's templates.

    ``index`` is ``None`` until the gallery is bound to a model (the dimension is unknown).
    A read-only handle never writes to an index another process owns (a Milvus collection).
    ``lock`` is the gallery's lock: writes and searches hold it, and a background retrain
    takes it to swap its index in. ``config`` is the concrete structure (``policy.resolve()``).
    """

    def __init__(
        self,
        store: Store,
        *,
        path: Path | None,
        backend: str,
        config: IndexConfig,
        read_only: bool,
        milvus_uri: str | None = None,
        lock: threading.RLock | None = None,
    ) -> None:
        self.store = store
        self.path = path
        self.backend = backend
        self.policy = config
        self.config = config.resolve()
        self.read_only = read_only
        self.milvus_uri = milvus_uri
        self.owners = TemplateOwners(*store.template_owners())
        self.index: VectorIndex | None = None
        self.dim: int | None = None
        self.background_retrain = True  # False: retrain inline on the write that crosses the mark
        self.retrain_process = True  # False: a background retrain builds its index in this process
        self._lock = lock if lock is not None else threading.RLock()
        self._job: _Retrain | None = None
        self._retry_at = 0.0  # after a failed background retrain, when to try again

    # ---- opening ---------------------------------------------------------------------------
    def open(self, dim: int) -> None:
        """Open (or create) the index for ``dim``-D templates and reconcile it with the store."""
        index: VectorIndex | None
        self.config = self.policy.resolve(dim)  # auto's codes depend on the dimension
        if self.backend == "milvus":
            from .milvus import MilvusIndex, collection_name

            gallery_id = self.store.get_meta("gallery_id")
            if gallery_id is None:
                raise GalleryError(f"gallery {self.path} has no id yet; open it for writing once")
            if self.milvus_uri is None and self.path is None:
                raise InvalidArgumentError("the Milvus backend of a PostgreSQL gallery needs milvus_uri")
            index = MilvusIndex(
                dim,
                self.config,
                uri=self.milvus_uri or str(Path(self.path or ".") / "milvus.db"),
                collection=collection_name(gallery_id),
                read_only=self.read_only,
            )
        elif self.config.engine == "torch":
            from .torch_index import TorchIndex

            index = TorchIndex(dim, self.config)  # held in memory only: reconcile fills it from the store
        else:
            index = FaissIndex.load(self.path, dim, self.config) if self.path is not None else None
            if index is None:
                index = FaissIndex(dim, self.config, self.path)
        self.dim, self.index = dim, index
        self.reconcile()
        self._record_choice()

    def reload(self) -> bool:
        """Re-read the store's templates (another process committed) and reconcile. True if any changed."""
        self.owners = TemplateOwners(*self.store.template_owners())
        return self.reconcile() if self.index is not None else False

    def reconcile(self) -> bool:
        """Make the index hold exactly the store's templates. Returns True if it changed."""
        index, dim = self.index, self.dim
        if index is None or dim is None:
            return False
        db_ids = self.owners.template_ids
        idx_ids = index.ids()
        missing = np.setdiff1d(db_ids, idx_ids, assume_unique=True)
        extra = np.setdiff1d(idx_ids, db_ids, assume_unique=True)
        changed = bool(missing.size or extra.size)
        if self.read_only and index.shared:
            # another process owns this index (a Milvus collection): a reader never writes to it.
            # Templates it lacks are not found until the writer repairs it; extras are never
            # returned because search maps ids through the store.
            if changed:
                logger.warning(
                    "%s lacks %d and has %d extra templates against the database; the writer repairs it",
                    index.describe(),
                    missing.size,
                    extra.size,
                )
            return changed
        if changed and (missing.size + extra.size) > REBUILD_FRACTION * max(db_ids.size, 1) and db_ids.size:
            logger.info("index disagrees with the database on %d templates; rebuilding", missing.size + extra.size)
            self.rebuild()
        elif changed:
            logger.info("repairing index: %d templates added, %d removed", missing.size, extra.size)
            self._remove(extra)
            for i in range(0, missing.size, _BATCH):
                ids, vecs = self.store.embeddings(missing[i : i + _BATCH].tolist(), dim)
                self._add(ids, vecs)
        if changed and not self.read_only:
            index.save()
        self._maybe_retrain()
        return changed

    def rebuild(self) -> None:
        """Rebuild (and retrain) the index from every stored embedding, now (a retrain under way is dropped)."""
        index, dim = self.index, self.dim
        if index is None or dim is None:
            return
        self.cancel_retrain()
        if isinstance(index, FaissIndex):
            snapshot = self.owners.template_ids.copy()
            fill(index, self.store, dim, snapshot, batch=_BATCH, cancelled=lambda: False)
        else:
            parts = list(self.store.iter_embeddings(dim, _BATCH))
            ids = np.concatenate([p[0] for p in parts]) if parts else np.zeros((0,), np.int64)
            vecs = np.concatenate([p[1] for p in parts]) if parts else np.zeros((0, dim), np.float32)
            index.rebuild(ids, vecs)
        logger.info("index rebuilt from %d stored templates (%s)", len(index), index.describe())
        self._record_choice()

    # ---- following committed writes ----------------------------------------------------------
    def added(self, template_ids: np.ndarray, identity_key: int, vectors: np.ndarray) -> None:
        """Templates the store just committed for one identity."""
        self.owners.append(template_ids, identity_key)
        if self.index is None or template_ids.size == 0:
            return
        self._add(template_ids, vectors)
        self._maybe_retrain()

    def removed(self, template_ids: np.ndarray) -> None:
        """Templates the store just deleted."""
        self.owners.remove(template_ids)
        if self.index is None or template_ids.size == 0:
            return
        self._remove(template_ids)
        self._maybe_retrain()  # e.g. HNSW tombstones past their share

    def _add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        assert self.index is not None
        ids = np.asarray(ids, np.int64)
        self.index.add(ids, vectors)
        if self._job is not None:
            self._job.logged(lambda log: log.add(ids, vectors))

    def _remove(self, ids: np.ndarray) -> None:
        assert self.index is not None
        ids = np.asarray(ids, np.int64)
        self.index.remove(ids)
        if self._job is not None and ids.size:
            self._job.logged(lambda log: log.remove(ids))

    # ---- retraining off the write path -----------------------------------------------------
    def _maybe_retrain(self) -> None:
        index = self.index
        if index is None or not index.needs_rebuild:
            return
        if self._job is not None or time.monotonic() < self._retry_at:
            return  # one at a time (the next one starts after the swap if still needed); back off after a failure
        if not self.background_retrain or not isinstance(index, FaissIndex) or self.dim is None:
            self.rebuild()
            return
        try:
            job = _Retrain(self, self.owners.template_ids.copy())
        except OSError as exc:  # no temporary file for the write log
            logger.warning("background retrain not started (next try in %d s): %s", RETRY_AFTER_S, exc)
            self._retry_at = time.monotonic() + RETRY_AFTER_S
            return
        self._job = job
        logger.info("retraining %s on %d templates in the background", index.describe(), len(index))
        job.start()

    @property
    def retraining(self) -> bool:
        """True while a background retrain is under way."""
        return self._job is not None

    def wait_retrain(self, timeout: float | None = None) -> bool:
        """Wait for background retrains to finish; True when none is under way any more.

        A swap may start the next retrain at once (the gallery outgrew the new index too, while
        it was being built): that one is waited for as well, within the same ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self._job
            if job is None:
                return True
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            job.thread.join(left)
            if job.thread.is_alive():
                return False

    def cancel_retrain(self) -> None:
        """Drop a background retrain (its thread stops at its next step; nothing it built is used)."""
        job = self._job
        if job is not None:
            job.cancelled.set()
            self._job = None

    def _swap(self, job: _Retrain, new: FaissIndex) -> bool:
        """Called by the retrain thread with the lock held: replay the rest of the log and swap."""
        if self._job is not job or job.cancelled.is_set():
            return False
        job.log.replay(new, job.applied, len(job.log))
        old, self.index, self._job = self.index, new, None
        if old is not None:
            old.close()
        logger.info("background retrain done in %.1f s: %s", time.monotonic() - job.started, new.describe())
        self._record_choice()
        self._maybe_retrain()
        return True

    def describe(self) -> str:
        """The live index, the policy that chose it, and a retrain under way."""
        if self.index is None:
            return "none (no model bound yet)"
        text = self.index.describe()
        if self.policy.kind == "auto":
            text += " [auto]"
        if self._job is not None:
            text += " (retraining in the background)"
        return text

    def _record_choice(self) -> None:
        """Write the structure in use, and why, into the store (writers; only when it changed)."""
        if self.read_only or self.index is None:
            return
        choice = {
            "policy": self.policy.describe(),
            "structure": self.config.describe(),
            "live": self.index.describe(),
            "reason": self.policy.choice_reason(),
        }
        try:
            raw = self.store.get_meta(CHOICE_KEY)
            if raw is not None and {k: v for k, v in json.loads(raw).items() if k in choice} == choice:
                return
            self.store.set_meta({CHOICE_KEY: json.dumps({**choice, "templates": len(self.owners), "at": time.time()})})
        except Exception as exc:  # a record is informative; failing to write it must not fail the caller
            logger.warning("could not record the index choice: %s", exc)

    # ---- following a shared store's change log ----------------------------------------------
    def follow(self, adds: dict[int, np.ndarray], removed: np.ndarray, vectors: dict[int, np.ndarray]) -> None:
        """Apply a batch of committed changes: ``adds`` (identity key -> template ids), ``removed`` ids.

        Idempotent: templates already held are not added again, absent ones not removed.
        ``vectors`` has the embeddings of the added templates a private (FAISS) index lacks;
        an added template without one was deleted since, and a later change removes it. A
        shared index (Milvus) is written by the process that committed: here only the
        template owners and the index's id set follow.
        """
        index = self.index
        track = getattr(index, "track", None) if index is not None and index.shared else None
        gone = removed[self.owners.lookup(removed) >= 0] if removed.size else removed
        if gone.size:
            self.owners.remove(gone)
            if track is not None:
                track(np.zeros((0,), np.int64), gone)
            elif index is not None:
                self._remove(gone)  # logged for a background retrain under way
        for key, tids in adds.items():
            new = tids[self.owners.lookup(tids) < 0]
            if index is not None and not index.shared:
                new = np.asarray([t for t in new.tolist() if t in vectors], np.int64)
                if new.size:
                    self._add(new, np.stack([vectors[int(t)] for t in new]))
            elif track is not None and new.size:
                track(new, np.zeros((0,), np.int64))
            self.owners.append(new, key)
        self._maybe_retrain()

    def write_shared(self, added: np.ndarray, vectors: np.ndarray, removed: np.ndarray) -> None:
        """Write this process's committed change to a shared index (no-op for a private one)."""
        index = self.index
        if index is None or not index.shared:
            return
        if removed.size:
            index.remove(removed)
        if added.size:
            index.add(added, vectors)

    # ---- checks and persistence ----------------------------------------------------------------
    def verify(self) -> tuple[int, int]:
        """(templates in the store, templates in the index); ``GalleryCorruptError`` if the id sets differ."""
        tids, _ = self.store.template_owners()
        idx = self.index.ids() if self.index is not None else np.zeros((0,), np.int64)
        if not np.array_equal(np.sort(tids), np.sort(idx)):
            raise GalleryCorruptError(f"index holds {idx.size} templates, the database {tids.size}")
        return int(tids.size), int(idx.size)

    def save(self) -> None:
        if self.index is not None:
            self.index.save()

    def close(self) -> None:
        self.cancel_retrain()
        if self.index is not None:
            self.index.close()


def fill(
    index: FaissIndex,
    store: Store,
    dim: int,
    snapshot: np.ndarray,
    *,
    batch: int,
    cancelled: object,
) -> bool:
    """Rebuild ``index`` from the store's embeddings of the template ids in ``snapshot`` (sorted):
    train on a random sample, then add in id order. False when ``cancelled()`` stopped it."""
    stop = cancelled if callable(cancelled) else (lambda: False)
    n = int(snapshot.size)
    size = index.training_size(n)
    if size:
        pick = np.sort(np.random.default_rng(n).choice(snapshot, size, replace=False)) if size < n else snapshot
        parts = [store.embeddings(pick[i : i + batch].tolist(), dim)[1] for i in range(0, pick.size, batch)]
        train = np.concatenate(parts) if parts else np.zeros((0, dim), np.float32)
    else:
        train = np.zeros((0, dim), np.float32)
    if stop():
        return False
    last = int(snapshot[-1]) if n else -1

    def batches():  # type: ignore[no-untyped-def]
        for ids, vecs in store.iter_embeddings(dim, batch):
            if stop():
                raise _Cancelled
            pos = np.minimum(np.searchsorted(snapshot, ids), max(n - 1, 0))
            keep = snapshot[pos] == ids if n else np.zeros(ids.shape, bool)
            yield ids[keep], vecs[keep]
            if ids.size and int(ids[-1]) >= last:
                return

    try:
        index.rebuild_from(train, n, batches())
    except _Cancelled:
        return False
    return True


class _Cancelled(Exception):
    pass


def _lower_thread_priority(step: int = 10) -> None:
    """Make the calling thread yield the CPU to the enrolments and searches (Linux: ``nice`` is
    per thread; elsewhere, or where it is not allowed, nothing changes)."""
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + step))
    except (AttributeError, OSError) as exc:  # pragma: no cover - not Linux, or not permitted
        logger.debug("background retrain keeps its priority: %s", exc)


class _Retrain:
    """A background rebuild of a FAISS index from the store, swapped in when it has caught up.

    The new index is built in a child process for a SQLite store (:mod:`.retrain`: no
    interpreter lock shared with the enrolments), in this thread otherwise."""

    def __init__(self, sync: IndexSync, snapshot: np.ndarray) -> None:
        self.sync = sync
        self.snapshot = snapshot
        assert sync.dim is not None
        self.log = WriteLog(sync.dim)  # writes since the snapshot, appended under the gallery's lock
        self.applied = 0
        self.cancelled = threading.Event()
        self.started = time.monotonic()
        self.thread = threading.Thread(target=self._run, name="facematch-index-retrain", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def logged(self, append: Callable[[WriteLog], None]) -> None:
        """Append a write to the log (the caller holds the gallery's lock). A log that cannot be
        written drops this retrain (the write itself stands; the next write past the mark retries)."""
        try:
            append(self.log)
        except OSError as exc:
            logger.warning("background retrain dropped: its write log failed (%s)", exc)
            self.sync.cancel_retrain()
            self.sync._retry_at = time.monotonic() + RETRY_AFTER_S

    def _build(self) -> FaissIndex | None:
        """The new index of the snapshot's templates (``None``: cancelled)."""
        sync = self.sync
        assert sync.dim is not None and isinstance(sync.index, FaissIndex)
        threads = max(1, cores() - 1)  # leave a core to the searches and enrolments the old index serves
        store = sync.store
        if sync.retrain_process and isinstance(store, SQLiteStore):
            try:
                return build_in_child(
                    store.path,
                    sync.dim,
                    sync.config,
                    self.snapshot,
                    sync.index.directory,
                    threads=threads,
                    cancelled=self.cancelled.is_set,
                )
            except RetrainChildError as exc:
                logger.warning("%s; building the new index in this process instead", exc)
        with faiss_threads(import_faiss(), threads):
            new = FaissIndex(sync.dim, sync.config, sync.index.directory)
            if not fill(new, store, sync.dim, self.snapshot, batch=RETRAIN_BATCH, cancelled=self.cancelled.is_set):
                return None
        return new

    def _run(self) -> None:
        sync = self.sync
        assert sync.dim is not None and isinstance(sync.index, FaissIndex)
        _lower_thread_priority()
        try:
            new = self._build()
            if new is None:
                return
            while not self.cancelled.is_set():
                with sync._lock:
                    if len(self.log) - self.applied <= SWAP_CATCHUP:
                        sync._swap(self, new)
                        return
                    pending = len(self.log)
                # outside the lock (writes go on meanwhile), leaving a core to them
                self.log.replay(new, self.applied, pending, threads=max(1, cores() - 1))
                self.applied = pending
        except Exception:
            if not self.cancelled.is_set():
                logger.exception(
                    "background index retrain failed; the current index keeps serving (next try in %d s)",
                    RETRY_AFTER_S,
                )
                with sync._lock:
                    if sync._job is self:
                        sync._job = None
                        sync._retry_at = time.monotonic() + RETRY_AFTER_S
        finally:
            self.log.close()  # no writer appends any more: the job is no longer the gallery's


__all__ = ["CHOICE_KEY", "REBUILD_FRACTION", "IndexSync", "fill"]
