"""The embedded store: one SQLite database file per gallery (``gallery.sqlite3``, WAL mode).

Embeddings are little-endian fp32 BLOBs; template ids come from ``AUTOINCREMENT`` and
are never reused; identity ids are unique by the ``identities.name`` constraint. Each
write is one ``BEGIN IMMEDIATE`` ... ``COMMIT`` transaction. Durability:
``synchronous=FULL`` (the default) fsyncs the WAL at every commit, so an acknowledged
enrolment survives a process kill *and* a power cut; ``NORMAL`` survives a process kill
(the WAL is in the OS page cache) but may lose the last commits on power loss.

Checkpoints (copying the WAL back into the database file, with its fsync) run off the
write path: a writer's connection does not checkpoint itself (SQLite's automatic
checkpoint would stall every ~100th enrolment for tens of ms), a background thread with
its own connection runs a PASSIVE checkpoint every ``CHECKPOINT_INTERVAL_S`` instead,
which never blocks writers or readers. A backstop automatic checkpoint on the writer
connection (``BACKSTOP_PAGES``) bounds the WAL should that thread fall behind.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..errors import GalleryCorruptError, GalleryError, InvalidArgumentError, TemplateNotFoundError
from .store import Store, TemplatesWritten, dump_metadata, duplicate_identity, identity_not_found
from .types import IdentityInfo

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
CHECKPOINT_INTERVAL_S = 0.5
BACKSTOP_PAGES = 50_000  # ~200 MB of WAL before a writer would checkpoint itself
READ_MMAP_BYTES = 1 << 40  # the read connection's memory map (SQLite clamps it to SQLITE_MAX_MMAP_SIZE)
_SQL_CHUNK = 900  # stay below SQLite's bound-parameter limit

Synchronous = Literal["FULL", "NORMAL"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS identities (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    metadata TEXT NOT NULL DEFAULT '{}',
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS templates (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    identity INTEGER NOT NULL REFERENCES identities(id) ON DELETE CASCADE,
    embedding BLOB NOT NULL,
    source TEXT,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS templates_identity ON templates(identity);
"""


def _check_rows(embeddings: np.ndarray, sources: Sequence[str | None]) -> np.ndarray:
    emb = np.ascontiguousarray(embeddings, dtype="<f4")
    if emb.ndim != 2 or emb.shape[0] != len(sources):
        raise InvalidArgumentError(f"{len(sources)} sources for embeddings of shape {emb.shape}")
    return emb


class SQLiteStore(Store):
    """One gallery database file (WAL mode); thread-safe (one connection, serialised by a lock)."""

    def __init__(self, path: Path, *, read_only: bool = False, synchronous: Synchronous = "FULL") -> None:
        if synchronous not in ("FULL", "NORMAL"):
            raise InvalidArgumentError("synchronous must be 'FULL' or 'NORMAL'")
        self.path = path
        self.read_only = read_only
        self._lock = threading.RLock()
        try:
            if read_only:
                self._conn = sqlite3.connect(
                    f"{path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False, isolation_level=None
                )
            else:
                self._conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
            self._conn.execute("PRAGMA busy_timeout=10000")
            self._conn.execute("PRAGMA foreign_keys=ON")
            if not read_only:
                mode = self._conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise GalleryError(f"could not put {path} in WAL mode (got {mode!r})")
                self._conn.execute(f"PRAGMA synchronous={synchronous}")
                self._conn.execute(f"PRAGMA wal_autocheckpoint={BACKSTOP_PAGES}")
                self._conn.executescript(_SCHEMA)
            self._check_schema()
        except sqlite3.DatabaseError as exc:
            raise GalleryCorruptError(f"{path} is not a usable gallery database: {exc}") from exc
        self._checkpointer = None if read_only else _Checkpointer(path, synchronous)
        # Bulk embedding reads (re-rank, background retrains, rebuilds) go through a second,
        # read-only connection: WAL lets them run beside the writer, so a retrain reading
        # a million embeddings never holds up an enrolment (nor an enrolment a search).
        self._reader = self._conn
        self._reader_lock = self._lock
        if not read_only:
            try:
                self._reader = sqlite3.connect(
                    f"{path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False, isolation_level=None
                )
                self._reader.execute("PRAGMA busy_timeout=10000")
                # memory-mapped reads: a re-rank's ~160 random template rows are page-cache memory
                # accesses instead of ~400 read() calls (SQLite caps the map at its compile-time
                # maximum, 2 GB in common builds; the rest of a larger file is read as before)
                self._reader.execute(f"PRAGMA mmap_size={READ_MMAP_BYTES}")
                self._reader_lock = threading.RLock()
            except sqlite3.Error as exc:  # reads then share the writer's connection
                logger.warning("no separate read connection for %s: %s", path, exc)

    def _check_schema(self) -> None:
        tables = {r[0] for r in self._conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not {"meta", "identities", "templates"} <= tables:
            raise GalleryCorruptError(f"{self.path} is not a facematch gallery (tables missing)")
        version = self.get_meta("schema_version")
        if version is None and not self.read_only:
            self.set_meta({"schema_version": str(SCHEMA_VERSION), "created_at": repr(time.time())})
        elif version is not None and int(version) > SCHEMA_VERSION:
            raise GalleryError(f"{self.path} has gallery schema {version}, newer than this facematch")

    def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.stop()
        with self._reader_lock:
            if self._reader is not self._conn:
                self._reader.close()
        with self._lock:
            self._conn.close()  # the last connection to close checkpoints the rest of the WAL

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT``; rolled back on any exception."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    # ---- settings --------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        with self._lock:
            row = self._conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, values: Mapping[str, str]) -> None:
        with self._transaction() as c:
            c.executemany("INSERT OR REPLACE INTO meta(key, value) VALUES(?, ?)", list(values.items()))

    def init_meta(self, values: Mapping[str, str]) -> dict[str, str]:
        if not values:
            return {}
        with self._transaction() as c:
            c.executemany("INSERT OR IGNORE INTO meta(key, value) VALUES(?, ?)", list(values.items()))
            rows = c.execute(
                f"SELECT key, value FROM meta WHERE key IN ({','.join('?' * len(values))})", list(values)
            ).fetchall()
        return {str(k): str(v) for k, v in rows}

    # ---- identities ------------------------------------------------------------------------
    def identity_key(self, identity_id: str) -> int | None:
        with self._lock:
            row = self._conn.execute("SELECT id FROM identities WHERE name=?", (identity_id,)).fetchone()
        return None if row is None else int(row[0])

    def _info_rows(self, rows: list[tuple[Any, ...]]) -> list[IdentityInfo]:
        if not rows:
            return []
        by_id: dict[int, list[int]] = {int(r[0]): [] for r in rows}
        keys = list(by_id)
        for i in range(0, len(keys), _SQL_CHUNK):
            chunk = keys[i : i + _SQL_CHUNK]
            q = f"SELECT identity, id FROM templates WHERE identity IN ({','.join('?' * len(chunk))}) ORDER BY id"
            for ident, tid in self._conn.execute(q, chunk):
                by_id[int(ident)].append(int(tid))
        return [
            IdentityInfo(
                identity_id=str(r[1]),
                template_ids=tuple(by_id[int(r[0])]),
                metadata=json.loads(r[2]),
                created_at=float(r[3]),
                updated_at=float(r[4]),
            )
            for r in rows
        ]

    def get_identity(self, identity_id: str) -> IdentityInfo | None:
        with self._lock:
            rows = self._conn.execute(
                "SELECT id, name, metadata, created_at, updated_at FROM identities WHERE name=?", (identity_id,)
            ).fetchall()
            infos = self._info_rows(rows)
        return infos[0] if infos else None

    def list_identities(self, after: str | None, limit: int) -> list[IdentityInfo]:
        with self._lock:
            if after is None:
                rows = self._conn.execute(
                    "SELECT id, name, metadata, created_at, updated_at FROM identities ORDER BY name LIMIT ?",
                    (limit,),
                ).fetchall()
            else:
                rows = self._conn.execute(
                    "SELECT id, name, metadata, created_at, updated_at FROM identities WHERE name > ? "
                    "ORDER BY name LIMIT ?",
                    (after, limit),
                ).fetchall()
            return self._info_rows(rows)

    def identities_by_key(self, keys: Sequence[int]) -> dict[int, tuple[str, dict[str, Any]]]:
        out: dict[int, tuple[str, dict[str, Any]]] = {}
        wanted = sorted(set(int(r) for r in keys))
        with self._lock:
            for i in range(0, len(wanted), _SQL_CHUNK):
                chunk = wanted[i : i + _SQL_CHUNK]
                q = f"SELECT id, name, metadata FROM identities WHERE id IN ({','.join('?' * len(chunk))})"
                for rid, name, meta in self._conn.execute(q, chunk):
                    out[int(rid)] = (str(name), json.loads(meta))
        return out

    def counts(self) -> tuple[int, int]:
        with self._lock:
            n_id = self._conn.execute("SELECT COUNT(*) FROM identities").fetchone()[0]
            n_t = self._conn.execute("SELECT COUNT(*) FROM templates").fetchone()[0]
        return int(n_id), int(n_t)

    # ---- templates -------------------------------------------------------------------------
    def template_owners(self) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            rows = self._conn.execute("SELECT id, identity FROM templates ORDER BY id").fetchall()
        if not rows:
            return np.zeros((0,), np.int64), np.zeros((0,), np.int64)
        arr = np.asarray(rows, dtype=np.int64)
        return arr[:, 0].copy(), arr[:, 1].copy()

    def embeddings(self, template_ids: Sequence[int], dim: int) -> tuple[np.ndarray, np.ndarray]:
        keys = sorted(set(int(t) for t in template_ids))
        found: list[int] = []
        blobs: list[bytes] = []
        with self._reader_lock:
            for i in range(0, len(keys), _SQL_CHUNK):
                chunk = keys[i : i + _SQL_CHUNK]
                q = f"SELECT id, embedding FROM templates WHERE id IN ({','.join('?' * len(chunk))}) ORDER BY id"
                for tid, blob in self._reader.execute(q, chunk):
                    found.append(int(tid))
                    blobs.append(blob)
        return np.asarray(found, np.int64), self._decode(blobs, dim)

    def embeddings_of_identities(self, keys: Sequence[int], dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        wanted = sorted(set(int(r) for r in keys))
        rows: list[tuple[int, int, bytes]] = []
        with self._reader_lock:
            for i in range(0, len(wanted), _SQL_CHUNK):
                chunk = wanted[i : i + _SQL_CHUNK]
                q = f"SELECT id, identity, embedding FROM templates WHERE identity IN ({','.join('?' * len(chunk))})"
                rows += self._reader.execute(q, chunk).fetchall()
        if not rows:
            return np.zeros((0,), np.int64), np.zeros((0,), np.int64), np.zeros((0, dim), np.float32)
        tids, owners, blobs = zip(*rows, strict=True)
        return np.asarray(tids, np.int64), np.asarray(owners, np.int64), self._decode(list(blobs), dim)

    def template_sources(self, template_ids: Sequence[int]) -> dict[int, str | None]:
        keys = sorted(set(int(t) for t in template_ids))
        out: dict[int, str | None] = {}
        with self._lock:
            for i in range(0, len(keys), _SQL_CHUNK):
                chunk = keys[i : i + _SQL_CHUNK]
                q = f"SELECT id, source FROM templates WHERE id IN ({','.join('?' * len(chunk))})"
                for tid, source in self._conn.execute(q, chunk):
                    out[int(tid)] = None if source is None else str(source)
        return out

    def iter_embeddings(self, dim: int, batch: int = 50_000) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        last = -1
        while True:
            with self._reader_lock:
                rows = self._reader.execute(
                    "SELECT id, embedding FROM templates WHERE id > ? ORDER BY id LIMIT ?", (last, batch)
                ).fetchall()
            if not rows:
                return
            last = int(rows[-1][0])
            yield np.asarray([r[0] for r in rows], np.int64), self._decode([r[1] for r in rows], dim)

    def _decode(self, blobs: list[bytes], dim: int) -> np.ndarray:
        if not blobs:
            return np.zeros((0, dim), np.float32)
        joined = b"".join(blobs)
        if len(joined) != len(blobs) * dim * 4:
            raise GalleryCorruptError(f"stored embeddings in {self.path} do not have dimension {dim}")
        return np.frombuffer(joined, dtype="<f4").reshape(len(blobs), dim).astype(np.float32)

    # ---- writes ----------------------------------------------------------------------------
    @staticmethod
    def _insert_templates(c: sqlite3.Connection, key: int, emb: np.ndarray, sources: Sequence[str | None]) -> list[int]:
        now = time.time()
        ids = []
        for vec, src in zip(emb, sources, strict=True):
            cur = c.execute(
                "INSERT INTO templates(identity, embedding, source, created_at) VALUES(?, ?, ?, ?)",
                (key, vec.tobytes(), src, now),
            )
            assert cur.lastrowid is not None
            ids.append(int(cur.lastrowid))
        c.execute("UPDATE identities SET updated_at=? WHERE id=?", (now, key))
        return ids

    def create_identity(
        self,
        identity_id: str,
        embeddings: np.ndarray,
        sources: Sequence[str | None],
        *,
        metadata: dict[str, Any] | None = None,
    ) -> TemplatesWritten:
        meta_json = dump_metadata(metadata)
        emb = _check_rows(embeddings, sources)
        now = time.time()
        with self._transaction() as c:
            try:
                cur = c.execute(
                    "INSERT INTO identities(name, metadata, created_at, updated_at) VALUES(?, ?, ?, ?)",
                    (identity_id, meta_json, now, now),
                )
            except sqlite3.IntegrityError as exc:
                if "identities.name" in str(exc):  # "UNIQUE constraint failed: identities.name"
                    raise duplicate_identity(identity_id) from exc
                raise
            assert cur.lastrowid is not None
            key = int(cur.lastrowid)
            tids = self._insert_templates(c, key, emb, sources)
        return TemplatesWritten(key, tuple(tids))

    def add_templates(
        self, identity_id: str, embeddings: np.ndarray, sources: Sequence[str | None]
    ) -> TemplatesWritten:
        emb = _check_rows(embeddings, sources)
        with self._transaction() as c:
            row = c.execute("SELECT id FROM identities WHERE name=?", (identity_id,)).fetchone()
            if row is None:
                raise identity_not_found(identity_id)
            key = int(row[0])
            tids = self._insert_templates(c, key, emb, sources)
        return TemplatesWritten(key, tuple(tids))

    def delete_identity(self, identity_id: str) -> IdentityInfo:
        with self._transaction() as c:
            rows = c.execute(
                "SELECT id, name, metadata, created_at, updated_at FROM identities WHERE name=?", (identity_id,)
            ).fetchall()
            if not rows:
                raise identity_not_found(identity_id)
            info = self._info_rows(rows)[0]
            c.execute("DELETE FROM identities WHERE id=?", (int(rows[0][0]),))  # templates cascade
        return info

    def delete_template(self, template_id: int) -> str:
        with self._transaction() as c:
            row = c.execute(
                "SELECT i.name FROM templates t JOIN identities i ON i.id = t.identity WHERE t.id=?",
                (int(template_id),),
            ).fetchone()
            if row is None:
                raise TemplateNotFoundError(f"no template {template_id}", template_id=int(template_id))
            c.execute("DELETE FROM templates WHERE id=?", (int(template_id),))
        return str(row[0])

    def set_metadata(self, identity_id: str, metadata: dict[str, Any]) -> IdentityInfo:
        text = dump_metadata(metadata)
        with self._transaction() as c:
            cur = c.execute(
                "UPDATE identities SET metadata=?, updated_at=? WHERE name=?", (text, time.time(), identity_id)
            )
            if cur.rowcount == 0:
                raise identity_not_found(identity_id)
            rows = c.execute(
                "SELECT id, name, metadata, created_at, updated_at FROM identities WHERE name=?", (identity_id,)
            ).fetchall()
            info = self._info_rows(rows)[0]
        return info


__all__ = ["SCHEMA_VERSION", "SQLiteStore", "Synchronous"]


class _Checkpointer:
    """A daemon thread that checkpoints the WAL (PASSIVE) so writers never do it inline."""

    def __init__(self, path: Path, synchronous: str) -> None:
        self._path = path
        self._synchronous = synchronous
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="facematch-sqlite-checkpoint", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            conn = sqlite3.connect(str(self._path), check_same_thread=False, isolation_level=None)
        except sqlite3.Error as exc:  # the writer's backstop checkpoint still bounds the WAL
            logger.warning("no background checkpoints for %s: %s", self._path, exc)
            return
        try:
            conn.execute("PRAGMA busy_timeout=1000")
            conn.execute(f"PRAGMA synchronous={self._synchronous}")
            while not self._stop.wait(CHECKPOINT_INTERVAL_S):
                self._checkpoint(conn)
        finally:
            conn.close()

    def _checkpoint(self, conn: sqlite3.Connection) -> None:
        try:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as exc:  # busy, or the file went away: try again next time
            logger.debug("checkpoint of %s skipped: %s", self._path, exc)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
