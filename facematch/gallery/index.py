"""Vector indexes behind the gallery: a small protocol and its FAISS implementation.

The index is *derived* data: SQLite holds every template's fp32 embedding, and an
index can always be rebuilt from it. An engine only has to add, remove and search
int64-keyed unit vectors by inner product, list the ids it holds, and persist itself.

FAISS layout: flat and scalar-quantised indexes are wrapped in ``IndexIDMap2`` (so
``remove_ids`` works); IVF indexes store the template ids natively (``IndexIDMap2``
over IVF returns wrong ids after a removal in FAISS 1.15, because the IVF lists keep
the positional ids the map has compacted away); HNSW cannot remove vectors, so removed
ids are tombstoned, filtered out of results, and compacted away by a rebuild.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..errors import BackendUnavailableError, InvalidArgumentError
from .config import IndexConfig
from .gpu_mirror import GPU_MAX_K, GpuMirror
from .gpu_probe import faiss_gpu_probe
from .threads import faiss_threads, threads_for

logger = logging.getLogger(__name__)

INDEX_FILE = "index.faiss"
MANIFEST_FILE = "index.json"
MANIFEST_FORMAT = 1
TOMBSTONE_REBUILD_FRACTION = 0.2
TRAIN_PER_LIST = 64  # k-means sample per IVF list (FAISS wants >= 39, samples up to 256 itself)
TRAIN_MAX = 131_072  # training sample of the codecs (SQ ranges, PQ codebooks)


@runtime_checkable
class VectorIndex(Protocol):
    """What the gallery needs from a search engine (FAISS, Milvus, ...)."""

    dim: int
    shared: bool  # True when the index lives outside this process (other handles see it)

    def __len__(self) -> int: ...

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add unit vectors ``(n, dim)`` float32 under int64 ``ids``."""

    def remove(self, ids: np.ndarray) -> None:
        """Remove ``ids`` (unknown ids are ignored)."""

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` inner products ``(q, k)`` float32 and ids ``(q, k)`` int64 (``-1`` pads)."""

    def ids(self) -> np.ndarray:
        """Sorted int64 array of the ids the index holds."""

    def rebuild(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Replace the whole content (and retrain, where the structure needs it)."""

    @property
    def needs_rebuild(self) -> bool:
        """True when a rebuild from the source of truth would improve the index."""

    def describe(self) -> str: ...

    def save(self) -> None:
        """Persist beside the database (no-op for engines that persist themselves)."""

    def close(self) -> None: ...


def training_sample(vectors: np.ndarray, size: int) -> np.ndarray:
    """``size`` rows of ``vectors`` drawn at random (all of them when there are no more)."""
    if size <= 0 or vectors.shape[0] <= size:
        return vectors
    pick = np.sort(np.random.default_rng(vectors.shape[0]).choice(vectors.shape[0], size, replace=False))
    return np.ascontiguousarray(vectors[pick])


def ids_digest(ids: np.ndarray) -> str:
    """Order-independent sha256 of an id set."""
    arr = np.sort(np.asarray(ids, dtype=np.int64).reshape(-1))
    return hashlib.sha256(arr.astype("<i8").tobytes()).hexdigest()


def import_faiss() -> Any:
    try:
        import faiss
    except ImportError as exc:  # pragma: no cover - faiss is in the cpu/gpu extras
        raise BackendUnavailableError(
            "FAISS is not installed: pip install 'facematch[cpu]' (faiss-cpu) or 'facematch[gpu]' (faiss-gpu)"
        ) from exc
    return faiss


def gpu_available(faiss: Any) -> bool:
    """True when this FAISS build has GPU support and passes the subprocess probe (:mod:`.gpu_probe`)."""
    return hasattr(faiss, "StandardGpuResources") and faiss_gpu_probe().usable


def gpu_unsupported(config: IndexConfig) -> str | None:
    """Why FAISS-GPU cannot hold this index structure (``None``: it can)."""
    if config.kind == "hnsw":
        return "FAISS-GPU has no HNSW index (use kind='flat' or 'ivf', or device='cpu')"
    if config.kind == "flat" and config.storage != "fp32":
        return (
            f"FAISS-GPU cannot hold a flat {config.storage} index (a scalar quantiser without lists); "
            "use storage='fp32', kind='ivf', or the torch index (engine='torch')"
        )
    if config.storage == "pq4":
        return "FAISS-GPU has no 4-bit fast-scan PQ (use kind='ivf' with fp32, sq8 or pq storage, or device='cpu')"
    if config.kind == "ivf" and config.nprobe_fraction is None and config.nprobe > GPU_MAX_K:
        return f"nprobe={config.nprobe} is above FAISS-GPU's limit of {GPU_MAX_K}"
    return None


def decide_gpu(faiss: Any, config: IndexConfig) -> bool:
    """Whether the index gets a GPU mirror; ``device='gpu'`` raises at open when it cannot have one."""
    if config.device == "cpu":
        return False
    reason = gpu_unsupported(config)
    if reason is None and not hasattr(faiss, "StandardGpuResources"):
        reason = "this FAISS build has no GPU support (faiss-cpu); pip install 'facematch[gpu]' (faiss-gpu)"
    if reason is None:
        probe = faiss_gpu_probe()
        reason = None if probe.usable else probe.reason
    if reason is None:
        return True
    if config.device == "gpu":
        error = InvalidArgumentError if gpu_unsupported(config) else BackendUnavailableError
        raise error(f"device='gpu': {reason}")
    logger.info("index on CPU: %s", reason)
    return False


def _check_batch(ids: np.ndarray, vectors: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    ids = np.ascontiguousarray(np.asarray(ids, dtype=np.int64).reshape(-1))
    vectors = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32))
    if vectors.ndim != 2 or vectors.shape[1] != dim or vectors.shape[0] != ids.shape[0]:
        raise InvalidArgumentError(f"expected {ids.shape[0]} vectors of dim {dim}, got shape {vectors.shape}")
    return ids, vectors


class FaissIndex:
    """A FAISS index of template embeddings, persisted as ``index.faiss`` + ``index.json``."""

    def __init__(self, dim: int, config: IndexConfig, directory: Path | None = None) -> None:
        self._faiss = import_faiss()
        self.dim = int(dim)
        self.shared = False
        config = config.resolve(self.dim)
        if config.storage in ("pq", "pq4") and self.dim % config.pq_m:
            raise InvalidArgumentError(f"pq_m={config.pq_m} must divide the embedding dimension {self.dim}")
        self.config = config
        self.directory = directory
        self._index: Any = None
        self._native_ids = False  # IVF keeps ids itself; everything else sits in an IndexIDMap2
        self._trained_structure = False  # False while a trained kind falls back to exact flat
        self._tombstones: set[int] = set()
        self._cpu_lock = threading.RLock()  # every CPU-index change; the GPU mirror's background copy
        self._use_gpu = decide_gpu(self._faiss, config)
        self._mirror: GpuMirror | None = None
        self.rebuild(np.zeros((0,), np.int64), np.zeros((0, self.dim), np.float32))

    # ---- structure -------------------------------------------------------------------------
    def _new_index(self, train: np.ndarray, n: int) -> Any:
        """An empty index structured (and trained on ``train``) for a gallery of ``n`` templates."""
        faiss = self._faiss
        cfg = self.config
        use_structure = not cfg.needs_training or n >= cfg.min_train
        desc = cfg.factory_string(n) if use_structure else "Flat"
        if use_structure and cfg.kind == "ivf":
            nlist = cfg.nlist_for(n)
            if nlist > max(1, n // 39):
                logger.info("IVF nlist=%d is large for %d training vectors (FAISS wants >= 39 per list)", nlist, n)
        inner = faiss.index_factory(self.dim, desc, faiss.METRIC_INNER_PRODUCT)
        if use_structure and cfg.kind == "hnsw":
            faiss.downcast_index(inner).hnsw.efConstruction = cfg.ef_construction
        if not inner.is_trained:
            inner.train(training_sample(train, self.training_size(n)))
        self._trained_structure = use_structure
        self._native_ids = use_structure and cfg.kind == "ivf"
        index = inner if self._native_ids else faiss.IndexIDMap2(inner)
        self._apply_search_params(index)
        return index

    def training_size(self, n: int) -> int:
        """How many of ``n`` templates a rebuild trains on (0: the structure needs no training)."""
        cfg = self.config
        if not cfg.needs_training or n < cfg.min_train:
            return 0
        return min(n, max(TRAIN_MAX, TRAIN_PER_LIST * cfg.nlist_for(n)) if cfg.kind == "ivf" else TRAIN_MAX)

    @property
    def exhaustive(self) -> bool:
        """True when a search is exact and complete (a re-rank would change nothing): flat fp32,
        or the exact flat index a trained kind uses until ``min_train``."""
        return (self.config.kind == "flat" and self.config.storage == "fp32") or not self._trained_structure

    def _inner(self, index: Any) -> Any:
        return index if self._native_ids else self._faiss.downcast_index(index.index)

    def _apply_search_params(self, index: Any) -> None:
        if not self._trained_structure:
            return
        inner = self._inner(index)
        if self.config.kind == "ivf":
            inner.nprobe = self.config.nprobe_for(inner.nlist)
        elif self.config.kind == "hnsw":
            inner.hnsw.efSearch = self.config.ef_search

    def configure_search(self, config: IndexConfig) -> None:
        """Use the search-time knobs of ``config`` (``nprobe``, ``ef_search``, ``rerank``,
        ``search_threads``, ...); its structure must be this index's."""
        config = config.resolve()
        if config.structure_key() != self.config.structure_key():
            raise InvalidArgumentError(f"{config.describe()} is another structure than {self.config.describe()}")
        with self._cpu_lock:
            self.config = config
            self._apply_search_params(self._index)
        self._gpu_changed()

    def rebuild(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        ids, vectors = _check_batch(ids, vectors, self.dim)
        self.rebuild_from(vectors, int(ids.size), [(ids, vectors)])

    def rebuild_from(self, train: np.ndarray, n: int, batches: Iterable[tuple[np.ndarray, np.ndarray]]) -> None:
        """Replace the content: a structure for ``n`` templates, trained on ``train`` (a random
        sample of them; :meth:`training_size` rows are used), then filled batch by batch."""
        with self._cpu_lock:
            self._index = self._new_index(np.ascontiguousarray(train, dtype=np.float32), int(n))
            self._tombstones.clear()
            for ids, vectors in batches:
                ids, vectors = _check_batch(ids, vectors, self.dim)
                if ids.size:
                    self._index.add_with_ids(vectors, ids)
        self._gpu_changed()

    @property
    def _nlist(self) -> int | None:
        """Lists of the trained IVF (None: not an IVF, or still the exact fallback)."""
        if not (self._trained_structure and self.config.kind == "ivf"):
            return None
        return int(self._inner(self._index).nlist)

    @property
    def needs_rebuild(self) -> bool:
        n = len(self)
        if self.config.needs_training and not self._trained_structure and n >= self.config.min_train:
            return True
        if self._nlist is not None and self.config.nlist is None and self.config.nlist_for(n) >= 2 * self._nlist:
            return True  # grown ~4x since k-means ran: retrain with more lists (keeps IVF lists short)
        return bool(self._tombstones) and len(self._tombstones) > TOMBSTONE_REBUILD_FRACTION * max(n, 1)

    # ---- content ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self._index.ntotal) - len(self._tombstones)

    def add(self, ids: np.ndarray, vectors: np.ndarray, *, threads: int | None = None) -> None:
        """Add ``vectors`` under ``ids``; ``threads``: FAISS threads for this call (default: the
        per-call rule, one thread for an enrolment's few vectors)."""
        ids, vectors = _check_batch(ids, vectors, self.dim)
        if ids.size == 0:
            return
        revived = self._tombstones.intersection(ids.tolist())
        if revived:  # an id removed from HNSW comes back: drop the stale vector first (rebuild)
            raise InvalidArgumentError(f"template ids {sorted(revived)[:5]} were removed and cannot be reused")
        # an enrolment's few vectors on this thread alone: a second OpenMP thread would wait for a
        # busy core (and spin) exactly as a one-probe search's does (threads.py)
        n_threads = threads if threads is not None else threads_for(ids.size, self.config.search_threads)
        with self._cpu_lock, faiss_threads(self._faiss, n_threads):
            self._index.add_with_ids(vectors, ids)  # the CPU change and the mirror's in one step (gpu_mirror.py)
            if self._mirror is not None:
                self._mirror.added(ids, vectors)

    def remove(self, ids: np.ndarray) -> None:
        ids = np.ascontiguousarray(np.asarray(ids, dtype=np.int64).reshape(-1))
        if ids.size == 0:
            return
        if self._trained_structure and self.config.kind == "hnsw":
            present = set(self._raw_ids().tolist())
            self._tombstones.update(i for i in ids.tolist() if i in present)
        else:
            with self._cpu_lock, faiss_threads(self._faiss, threads_for(ids.size, self.config.search_threads)):
                self._index.remove_ids(self._faiss.IDSelectorBatch(ids.size, self._faiss.swig_ptr(ids)))
                if self._mirror is not None:
                    self._mirror.removed(ids)

    def _raw_ids(self) -> np.ndarray:
        if not self._native_ids:
            return self._faiss.vector_to_array(self._index.id_map).astype(np.int64)
        faiss = self._faiss
        invlists = self._index.invlists
        parts = [
            faiss.rev_swig_ptr(invlists.get_ids(lst), invlists.list_size(lst)).copy()
            for lst in range(self._index.nlist)
            if invlists.list_size(lst)
        ]
        return np.concatenate(parts).astype(np.int64) if parts else np.zeros((0,), np.int64)

    def ids(self) -> np.ndarray:
        raw = np.sort(self._raw_ids())
        if self._tombstones:
            raw = raw[~np.isin(raw, np.fromiter(self._tombstones, np.int64))]
        return raw

    # ---- search ----------------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = np.ascontiguousarray(np.asarray(queries, dtype=np.float32))
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise InvalidArgumentError(f"queries must have shape (n, {self.dim}), got {q.shape}")
        total = int(self._index.ntotal)
        if total == 0 or k <= 0 or q.shape[0] == 0:
            return np.zeros((q.shape[0], max(k, 0)), np.float32), np.full((q.shape[0], max(k, 0)), -1, np.int64)
        fetch = min(k + len(self._tombstones), total)
        scores, ids = self._search_raw(q, fetch)
        if self._tombstones:
            scores, ids = self._drop_tombstones(scores, ids, k)
        if ids.shape[1] < k:  # pad to the asked width
            pad = k - ids.shape[1]
            scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
            ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
        scores = np.where(ids >= 0, scores, -np.inf).astype(np.float32)
        return scores, ids

    def _search_raw(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self._mirror is not None:
            found = self._mirror.search(q, k)
            if found is not None:
                return found
        with faiss_threads(self._faiss, threads_for(q.shape[0], self.config.search_threads)):
            scores, ids = self._index.search(q, k)
        return scores, ids.astype(np.int64)

    def _drop_tombstones(self, scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        dead = np.isin(ids, np.fromiter(self._tombstones, np.int64))
        out_s = np.full((ids.shape[0], k), -np.inf, np.float32)
        out_i = np.full((ids.shape[0], k), -1, np.int64)
        for r in range(ids.shape[0]):
            keep = np.flatnonzero(~dead[r])[:k]
            out_s[r, : keep.size] = scores[r, keep]
            out_i[r, : keep.size] = ids[r, keep]
        return out_s, out_i

    # ---- GPU mirror (facematch/gallery/gpu_mirror.py) -----------------------------------------
    def _mirror_source(self) -> tuple[Any, np.ndarray | None]:
        """What the mirror copies: the inner CPU index and its position → id map (None: IVF keeps ids)."""
        if self._native_ids:
            return self._index, None
        return self._inner(self._index), self._faiss.vector_to_array(self._index.id_map).astype(np.int64)

    def _gpu_changed(self) -> None:
        """The CPU index was replaced: drop the mirror and copy the new one in the background."""
        if not self._use_gpu:
            return
        nlist = self._nlist
        nprobe = self.config.nprobe_for(nlist) if nlist is not None else None
        if self._mirror is None:
            self._mirror = GpuMirror(self._faiss, self._mirror_source, self._cpu_lock)
        self._mirror.nprobe = nprobe
        self._mirror.schedule(drop=True)

    def wait_for_gpu(self, timeout: float | None = None) -> bool:
        """Wait for the GPU mirror's background copy; True when searches run on the GPU."""
        return self._mirror.wait(timeout) if self._mirror is not None else False

    @property
    def on_gpu(self) -> bool:
        """True while searches run on the GPU mirror (False: CPU, or the mirror is being copied)."""
        return self._mirror is not None and self._mirror.live

    def describe(self) -> str:
        cfg = self.config if self._nlist is None else replace(self.config, nlist=self._nlist)
        live = cfg.describe() if (self._trained_structure or not self.config.needs_training) else "flat/fp32"
        if not self._trained_structure and self.config.needs_training:
            live += f" (exact until {self.config.min_train} templates, then {self.config.describe()})"
        return f"faiss:{live}@{'gpu' if self._use_gpu else 'cpu'}"

    # ---- persistence -----------------------------------------------------------------------
    def save(self) -> None:
        if self.directory is None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        index_path = self.directory / INDEX_FILE
        tmp = index_path.with_name(INDEX_FILE + ".tmp")
        self._faiss.write_index(self._index, str(tmp))
        _fsync_file(tmp)
        os.replace(tmp, index_path)
        raw = self._raw_ids()
        manifest = {
            "format": MANIFEST_FORMAT,
            "dim": self.dim,
            "structure": self.config.structure_key(),
            "trained_structure": self._trained_structure,
            "native_ids": self._native_ids,
            "count": int(raw.size),
            "ids_sha256": ids_digest(raw),
        }
        _write_json_atomic(self.directory / MANIFEST_FILE, manifest)
        logger.info("saved index (%d vectors) to %s", raw.size, index_path)

    @classmethod
    def load(cls, directory: Path, dim: int, config: IndexConfig, *, check_ids: bool = True) -> FaissIndex | None:
        """Load a saved index, or ``None`` when it is absent, for another structure, or damaged.

        ``check_ids=False`` skips comparing the ids it holds with the manifest's digest (a sort
        and a hash of every id), for a file whose writer is known to have finished."""
        index_path, manifest_path = directory / INDEX_FILE, directory / MANIFEST_FILE
        if not index_path.is_file() or not manifest_path.is_file():
            return None
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            logger.warning("index manifest unreadable (%s); the index will be rebuilt", exc)
            return None
        if (
            manifest.get("format") != MANIFEST_FORMAT
            or manifest.get("dim") != dim
            or manifest.get("structure") != config.structure_key()
        ):
            logger.info("saved index was built for another configuration; it will be rebuilt")
            return None
        self = cls(dim, config, directory)
        try:
            index = self._faiss.read_index(str(index_path))
        except Exception as exc:  # FAISS raises RuntimeError on any damage
            logger.warning("index file unreadable (%s); it will be rebuilt", exc)
            return None
        self._index = index
        self._trained_structure = bool(manifest.get("trained_structure"))
        self._native_ids = bool(manifest.get("native_ids"))
        if int(index.d) != dim or (not self._native_ids and not hasattr(index, "id_map")):
            logger.warning("index file does not match its manifest; it will be rebuilt")
            return None
        raw = self._raw_ids() if check_ids else None
        if raw is not None and (raw.size != manifest.get("count") or ids_digest(raw) != manifest.get("ids_sha256")):
            logger.warning("index file and manifest disagree (interrupted save?); the index will be rebuilt")
            return None
        self._apply_search_params(index)
        self._gpu_changed()
        return self

    def close(self) -> None:
        if self._mirror is not None:
            self._mirror.close()

    def memory_bytes(self) -> int:
        """Size of the serialised index: a close estimate of its memory footprint."""
        return int(self._faiss.serialize_index(self._index).size)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


__all__ = [
    "FaissIndex",
    "VectorIndex",
    "decide_gpu",
    "gpu_available",
    "gpu_unsupported",
    "ids_digest",
    "import_faiss",
    "training_sample",
]
