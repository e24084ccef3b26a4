"""The derived index, kept in step with the store: opening it, reconciling, rebuilding.

The store holds every template's fp32 embedding; the vector index (FAISS files beside
the database, or a Milvus collection) is derived from it and can always be rebuilt.
:class:`IndexSync` owns the index and the in-memory template → identity map
(:class:`TemplateOwners`), follows each committed write, and on open (or ``refresh``)
makes the index hold exactly the store's templates: a small disagreement is repaired by
delta, a large one (or a damaged file, or another structure) by a full rebuild.

A gallery whose store is shared by several processes (PostgreSQL) has no directory: its
FAISS index lives in memory only, is built from the store on open, and follows the
store's change log (:meth:`IndexSync.follow`, fed by :mod:`~facematch.gallery.changes`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..errors import GalleryCorruptError, GalleryError, InvalidArgumentError
from .config import IndexConfig
from .index import FaissIndex, VectorIndex
from .owners import TemplateOwners
from .store import Store

logger = logging.getLogger(__name__)

REBUILD_FRACTION = 0.5  # repair by delta below this much disagreement, rebuild above
_BATCH = 50_000


class IndexSync:
    """The gallery's derived vector index and template owners, kept equal to the store's templates.

    ``index`` is ``None`` until the gallery is bound to a model (the dimension is unknown).
    A read-only handle never writes to an index another process owns (a Milvus collection).
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
    ) -> None:
        self.store = store
        self.path = path
        self.backend = backend
        self.config = config
        self.read_only = read_only
        self.milvus_uri = milvus_uri
        self.owners = TemplateOwners(*store.template_owners())
        self.index: VectorIndex | None = None
        self.dim: int | None = None

    # ---- opening ---------------------------------------------------------------------------
    def open(self, dim: int) -> None:
        """Open (or create) the index for ``dim``-D templates and reconcile it with the store."""
        index: VectorIndex | None
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
            index.remove(extra)
            for i in range(0, missing.size, _BATCH):
                ids, vecs = self.store.embeddings(missing[i : i + _BATCH].tolist(), dim)
                index.add(ids, vecs)
        if index.needs_rebuild:
            self.rebuild()
            changed = True
        if changed and not self.read_only:
            index.save()
        return changed

    def rebuild(self) -> None:
        """Rebuild (and retrain) the index from every stored embedding."""
        index, dim = self.index, self.dim
        if index is None or dim is None:
            return
        parts = list(self.store.iter_embeddings(dim, _BATCH))
        ids = np.concatenate([p[0] for p in parts]) if parts else np.zeros((0,), np.int64)
        vecs = np.concatenate([p[1] for p in parts]) if parts else np.zeros((0, dim), np.float32)
        index.rebuild(ids, vecs)
        logger.info("index rebuilt from %d stored templates (%s)", ids.size, index.describe())

    # ---- following committed writes ----------------------------------------------------------
    def added(self, template_ids: np.ndarray, identity_key: int, vectors: np.ndarray) -> None:
        """Templates the store just committed for one identity."""
        self.owners.append(template_ids, identity_key)
        if self.index is None or template_ids.size == 0:
            return
        self.index.add(template_ids, vectors)
        if self.index.needs_rebuild:
            self.rebuild()

    def removed(self, template_ids: np.ndarray) -> None:
        """Templates the store just deleted."""
        self.owners.remove(template_ids)
        if self.index is None or template_ids.size == 0:
            return
        self.index.remove(template_ids)
        if self.index.needs_rebuild:  # e.g. HNSW tombstones past their share
            self.rebuild()

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
                index.remove(gone)
        for key, tids in adds.items():
            new = tids[self.owners.lookup(tids) < 0]
            if index is not None and not index.shared:
                new = np.asarray([t for t in new.tolist() if t in vectors], np.int64)
                if new.size:
                    index.add(new, np.stack([vectors[int(t)] for t in new]))
            elif track is not None and new.size:
                track(new, np.zeros((0,), np.int64))
            self.owners.append(new, key)
        if index is not None and index.needs_rebuild:
            self.rebuild()

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
        if self.index is not None:
            self.index.close()


__all__ = ["REBUILD_FRACTION", "IndexSync"]
