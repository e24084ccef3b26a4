"""Milvus backend: the same :class:`~facematch.gallery.index.VectorIndex` contract over ``pymilvus``.

``uri`` is a local ``*.db`` file (milvus-lite, embedded, for tests and small
deployments) or a server address (``http://host:19530``) for a Milvus cluster. The
SQLite store stays the source of truth; the collection is derived from it and
reconciled on open, exactly like the FAISS index file. With a PostgreSQL catalogue shared
by several processes, each writes its own commits to the collection and follows the
others' through the change log (:meth:`MilvusIndex.track`).

Each gallery owns one collection, named from the random ``gallery_id`` its database
keeps (``facematch_<id>``), so many galleries can share one Milvus. Read-only handles
never create, drop or write a collection.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import numpy as np

from ..errors import BackendUnavailableError, GalleryCorruptError, GalleryError, InvalidArgumentError
from .config import IndexConfig

logger = logging.getLogger(__name__)

COLLECTION_PREFIX = "facematch_"
_INSERT_BATCH = 5000
_MAX_LIMIT = 16384  # Milvus' largest topk
_CLIENT_LOCK = threading.Lock()


def _client(uri: str) -> Any:
    try:
        from pymilvus import MilvusClient
    except ImportError as exc:
        raise BackendUnavailableError("the Milvus backend needs pymilvus: pip install 'facematch[milvus]'") from exc
    try:
        with _CLIENT_LOCK:  # milvus-lite starts its embedded server per file; two threads at once race for it
            return MilvusClient(uri)
    except Exception as exc:  # connection/launch failures of any kind
        raise BackendUnavailableError(f"cannot open Milvus at {uri}: {exc}") from exc


def collection_name(gallery_id: str) -> str:
    """The collection of the gallery whose database holds ``gallery_id`` (hex)."""
    if not gallery_id or not all(c in "0123456789abcdef" for c in gallery_id):
        raise GalleryCorruptError(f"gallery id {gallery_id!r} is not a hex string")
    return COLLECTION_PREFIX + gallery_id


class MilvusIndex:
    """Template vectors in a Milvus collection (int64 primary key ``id``, ``vector``, inner product)."""

    def __init__(self, dim: int, config: IndexConfig, *, uri: str, collection: str, read_only: bool = False) -> None:
        self.dim = int(dim)
        self.config = config
        self.uri = uri
        self.collection = collection
        self.read_only = read_only
        self.shared = True
        self._client = _client(uri)
        self._index_type = "FLAT"
        try:
            self._attach()
        except BaseException:
            self.close()
            raise
        self._ids: set[int] = set(self._query_ids().tolist())

    # ---- collection ------------------------------------------------------------------------
    def _attach(self) -> None:
        exists = self._client.has_collection(self.collection)
        if exists and self._collection_dim() != self.dim:
            if self.read_only:
                raise GalleryCorruptError(f"Milvus collection {self.collection} does not hold {self.dim}-D vectors")
            logger.warning("Milvus collection %s has another dimension; recreating it", self.collection)
            self._client.drop_collection(self.collection)
            exists = False
        if exists:
            self._index_type = self._described_index_type()
        elif self.read_only:
            raise GalleryError(
                f"Milvus at {self.uri} has no collection {self.collection}; open the gallery for writing once"
            )
        else:
            self._create()

    def _described_index_type(self) -> str:
        try:
            names = self._client.list_indexes(self.collection, field_name="vector")
            if names:
                desc = self._client.describe_index(self.collection, index_name=names[0])
                return str(desc.get("index_type", "FLAT"))
        except Exception as exc:  # an engine that cannot describe its index is searched as FLAT
            logger.debug("describing the index of %s: %s", self.collection, exc)
        return "FLAT"

    def _check_writable(self) -> None:
        if self.read_only:
            raise GalleryError(f"Milvus collection {self.collection} is open read-only")

    def _collection_dim(self) -> int | None:
        desc = self._client.describe_collection(self.collection)
        for f in desc.get("fields", []):
            if f.get("name") == "vector":
                return int(f.get("params", {}).get("dim", -1))
        return None

    def _index_params(self) -> tuple[str, dict[str, Any]]:
        cfg = self.config
        if cfg.kind == "ivf":
            kind = "IVF_SQ8" if cfg.storage == "sq8" else "IVF_FLAT"
            return kind, {"nlist": cfg.nlist or 1024}
        if cfg.kind == "hnsw":
            return "HNSW", {"M": cfg.hnsw_m, "efConstruction": cfg.ef_construction}
        return "FLAT", {}

    def _create(self) -> None:
        from pymilvus import DataType, MilvusClient

        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=self.dim)
        kind, params = self._index_params()
        for attempt in (kind, "FLAT"):
            index_params = self._client.prepare_index_params()
            index_params.add_index(
                field_name="vector", index_type=attempt, metric_type="IP", params=params if attempt == kind else {}
            )
            try:
                self._client.create_collection(
                    self.collection, schema=schema, index_params=index_params, consistency_level="Strong"
                )
                self._index_type = attempt
                break
            except Exception as exc:  # e.g. milvus-lite supports few index types
                if "exist" in str(exc).lower() and self._client.has_collection(self.collection):
                    # another process sharing the catalogue created it at the same moment: use theirs
                    self._index_type = self._described_index_type()
                    return
                if attempt == "FLAT":
                    raise BackendUnavailableError(f"cannot create Milvus collection: {exc}") from exc
                logger.warning("Milvus refused a %s index (%s); using FLAT", attempt, exc)
                if self._client.has_collection(self.collection):
                    self._client.drop_collection(self.collection)

    def _query_ids(self) -> np.ndarray:
        it = self._client.query_iterator(self.collection, batch_size=10_000, filter="id >= 0", output_fields=["id"])
        out: list[int] = []
        try:
            while True:
                batch = it.next()
                if not batch:
                    break
                out.extend(int(r["id"]) for r in batch)
        finally:
            it.close()
        return np.asarray(sorted(out), np.int64)

    # ---- VectorIndex -----------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._ids)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        self._check_writable()
        ids = np.asarray(ids, np.int64).reshape(-1)
        vecs = np.asarray(vectors, np.float32)
        if vecs.ndim != 2 or vecs.shape != (ids.size, self.dim):
            raise InvalidArgumentError(f"expected {ids.size} vectors of dim {self.dim}, got shape {vecs.shape}")
        # Milvus does not enforce unique primary keys on insert: ids it may already hold are upserted
        write = self._client.upsert if any(int(t) in self._ids for t in ids) else self._client.insert
        for i in range(0, ids.size, _INSERT_BATCH):
            rows = [
                {"id": int(t), "vector": v.tolist()}
                for t, v in zip(ids[i : i + _INSERT_BATCH], vecs[i : i + _INSERT_BATCH], strict=True)
            ]
            write(self.collection, rows)
        self._ids.update(ids.tolist())

    def remove(self, ids: np.ndarray) -> None:
        self._check_writable()
        keys = [int(i) for i in np.asarray(ids, np.int64).reshape(-1) if int(i) in self._ids]
        if keys:
            self._client.delete(self.collection, ids=keys)
            self._ids.difference_update(keys)

    def track(self, added: np.ndarray, removed: np.ndarray) -> None:
        """Another process wrote these ids to the shared collection: keep this handle's id set in step."""
        self._ids.update(int(t) for t in np.asarray(added, np.int64).reshape(-1))
        self._ids.difference_update(int(t) for t in np.asarray(removed, np.int64).reshape(-1))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = np.asarray(queries, np.float32)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise InvalidArgumentError(f"queries must have shape (n, {self.dim}), got {q.shape}")
        scores = np.full((q.shape[0], k), -np.inf, np.float32)
        ids = np.full((q.shape[0], k), -1, np.int64)
        limit = min(k, len(self._ids), _MAX_LIMIT)
        if limit <= 0 or q.shape[0] == 0:
            return scores, ids
        params: dict[str, Any] = {"metric_type": "IP"}
        if self._index_type.startswith("IVF"):
            params["params"] = {"nprobe": self.config.nprobe}
        elif self._index_type == "HNSW":
            params["params"] = {"ef": max(self.config.ef_search, limit)}
        hits = self._client.search(
            self.collection, data=q.tolist(), limit=limit, output_fields=["id"], search_params=params
        )
        for r, row in enumerate(hits):
            for j, h in enumerate(row[:k]):
                ids[r, j] = int(h["id"])
                scores[r, j] = float(h["distance"])
        return scores, ids

    def ids(self) -> np.ndarray:
        return np.asarray(sorted(self._ids), np.int64)

    def rebuild(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        self._check_writable()
        self._client.drop_collection(self.collection)
        self._create()
        self._ids = set()
        self.add(ids, vectors)

    @property
    def needs_rebuild(self) -> bool:
        return False

    def describe(self) -> str:
        where = "lite" if self.uri.endswith(".db") else "server"
        return f"milvus:{self._index_type}@{where}"

    def save(self) -> None:
        if not self.read_only:
            self._client.flush(self.collection)

    def close(self) -> None:
        try:
            self._client.close()
        except Exception as exc:  # closing a dead connection is not an error
            logger.debug("closing Milvus client: %s", exc)


__all__ = ["COLLECTION_PREFIX", "MilvusIndex", "collection_name"]
