"""SQLite store: the gallery's source of truth.

One database file in WAL mode holds the gallery's model binding, identities (with
JSON metadata), and every template's fp32 embedding as a little-endian BLOB.
Template ids come from ``AUTOINCREMENT`` and are never reused, so a stale index can
never point a deleted template's id at a new face.

Durability: each public write is one transaction committed before the call returns.
``synchronous=FULL`` (the default) fsyncs the WAL at every commit, so an acknowledged
enrolment survives a process kill *and* a power cut; ``NORMAL`` survives a process
kill (the WAL is in the OS page cache) but may lose the last commits on power loss.
"""

from __future__ import annotations

import base64
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..errors import GalleryCorruptError, GalleryError, InvalidArgumentError
from .types import IdentityInfo

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
MAX_METADATA_BYTES = 64 * 1024
MAX_IDENTITY_LEN = 256
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


def validate_identity_id(identity_id: object) -> str:
    if not isinstance(identity_id, str) or not identity_id.strip():
        raise InvalidArgumentError("identity id must be a non-empty string")
    if len(identity_id) > MAX_IDENTITY_LEN:
        raise InvalidArgumentError(f"identity id is longer than {MAX_IDENTITY_LEN} characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in identity_id):
        raise InvalidArgumentError("identity id must not contain control characters")
    return identity_id


def dump_metadata(metadata: object) -> str:
    if metadata is None:
        return "{}"
    if not isinstance(metadata, dict) or not all(isinstance(k, str) for k in metadata):
        raise InvalidArgumentError("metadata must be a dict with string keys")
    try:
        text = json.dumps(metadata, ensure_ascii=False, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentError(f"metadata must be JSON-serialisable: {exc}") from exc
    if len(text.encode("utf-8")) > MAX_METADATA_BYTES:
        raise InvalidArgumentError(f"metadata is larger than {MAX_METADATA_BYTES} bytes as JSON")
    return text


def encode_cursor(name: str) -> str:
    return base64.urlsafe_b64encode(name.encode("utf-8")).decode("ascii").rstrip("=")


def decode_cursor(cursor: str) -> str:
    if not isinstance(cursor, str):
        raise InvalidArgumentError(f"a pagination cursor is the string a previous page returned, got {cursor!r}")
    try:
        pad = "=" * (-len(cursor) % 4)
        return base64.b64decode((cursor + pad).encode("ascii"), altchars=b"-_", validate=True).decode("utf-8")
    except (ValueError, UnicodeError) as exc:
        raise InvalidArgumentError("invalid pagination cursor") from exc


class Store:
    """Thread-safe access to one gallery database (one connection, serialised by a lock)."""

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
                self._conn.executescript(_SCHEMA)
            self._check_schema()
        except sqlite3.DatabaseError as exc:
            raise GalleryCorruptError(f"{path} is not a usable gallery database: {exc}") from exc

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
        with self._lock:
            self._conn.close()

    # ---- transactions ----------------------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT``; rolled back on any exception."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    # ---- meta ------------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        with self._lock:
            row = self._conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, values: dict[str, str]) -> None:
        with self.transaction() as c:
            c.executemany("INSERT OR REPLACE INTO meta(key, value) VALUES(?, ?)", list(values.items()))

    # ---- identities ------------------------------------------------------------------------
    def identity_rowid(self, name: str) -> int | None:
        with self._lock:
            row = self._conn.execute("SELECT id FROM identities WHERE name=?", (name,)).fetchone()
        return None if row is None else int(row[0])

    @staticmethod
    def insert_identity(c: sqlite3.Connection, name: str, metadata_json: str) -> int:
        now = time.time()
        cur = c.execute(
            "INSERT INTO identities(name, metadata, created_at, updated_at) VALUES(?, ?, ?, ?)",
            (name, metadata_json, now, now),
        )
        assert cur.lastrowid is not None
        return int(cur.lastrowid)

    @staticmethod
    def insert_templates(
        c: sqlite3.Connection, identity_rowid: int, embeddings: np.ndarray, sources: Sequence[str | None]
    ) -> list[int]:
        now = time.time()
        ids = []
        emb = np.ascontiguousarray(embeddings, dtype="<f4")
        for vec, src in zip(emb, sources, strict=True):
            cur = c.execute(
                "INSERT INTO templates(identity, embedding, source, created_at) VALUES(?, ?, ?, ?)",
                (identity_rowid, vec.tobytes(), src, now),
            )
            assert cur.lastrowid is not None
            ids.append(int(cur.lastrowid))
        c.execute("UPDATE identities SET updated_at=? WHERE id=?", (now, identity_rowid))
        return ids

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

    def get_identity(self, name: str) -> IdentityInfo | None:
        with self._lock:
            rows = self._conn.execute(
                "SELECT id, name, metadata, created_at, updated_at FROM identities WHERE name=?", (name,)
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

    def identities_by_rowid(self, rowids: Sequence[int]) -> dict[int, tuple[str, dict[str, Any]]]:
        """rowid -> (identity id, metadata) for the given rowids."""
        out: dict[int, tuple[str, dict[str, Any]]] = {}
        keys = sorted(set(int(r) for r in rowids))
        with self._lock:
            for i in range(0, len(keys), _SQL_CHUNK):
                chunk = keys[i : i + _SQL_CHUNK]
                q = f"SELECT id, name, metadata FROM identities WHERE id IN ({','.join('?' * len(chunk))})"
                for rid, name, meta in self._conn.execute(q, chunk):
                    out[int(rid)] = (str(name), json.loads(meta))
        return out

    def counts(self) -> tuple[int, int]:
        """(identities, templates)."""
        with self._lock:
            n_id = self._conn.execute("SELECT COUNT(*) FROM identities").fetchone()[0]
            n_t = self._conn.execute("SELECT COUNT(*) FROM templates").fetchone()[0]
        return int(n_id), int(n_t)

    # ---- templates -------------------------------------------------------------------------
    def template_owners(self) -> tuple[np.ndarray, np.ndarray]:
        """All template ids (sorted) and their identity rowids."""
        with self._lock:
            rows = self._conn.execute("SELECT id, identity FROM templates ORDER BY id").fetchall()
        if not rows:
            return np.zeros((0,), np.int64), np.zeros((0,), np.int64)
        arr = np.asarray(rows, dtype=np.int64)
        return arr[:, 0].copy(), arr[:, 1].copy()

    def template_identity(self, template_id: int) -> tuple[int, str] | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT t.identity, i.name FROM templates t JOIN identities i ON i.id = t.identity WHERE t.id=?",
                (int(template_id),),
            ).fetchone()
        return None if row is None else (int(row[0]), str(row[1]))

    def embeddings(self, template_ids: Sequence[int], dim: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids, fp32 embeddings) for the given template ids that exist, in ascending id order."""
        keys = sorted(set(int(t) for t in template_ids))
        found: list[int] = []
        blobs: list[bytes] = []
        with self._lock:
            for i in range(0, len(keys), _SQL_CHUNK):
                chunk = keys[i : i + _SQL_CHUNK]
                q = f"SELECT id, embedding FROM templates WHERE id IN ({','.join('?' * len(chunk))}) ORDER BY id"
                for tid, blob in self._conn.execute(q, chunk):
                    found.append(int(tid))
                    blobs.append(blob)
        return np.asarray(found, np.int64), self._decode(blobs, dim)

    def embeddings_of_identities(self, rowids: Sequence[int], dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(template ids, identity rowids, embeddings) of every template of the given identities."""
        keys = sorted(set(int(r) for r in rowids))
        tids: list[int] = []
        owners: list[int] = []
        blobs: list[bytes] = []
        with self._lock:
            for i in range(0, len(keys), _SQL_CHUNK):
                chunk = keys[i : i + _SQL_CHUNK]
                q = f"SELECT id, identity, embedding FROM templates WHERE identity IN ({','.join('?' * len(chunk))})"
                for tid, owner, blob in self._conn.execute(q, chunk):
                    tids.append(int(tid))
                    owners.append(int(owner))
                    blobs.append(blob)
        return np.asarray(tids, np.int64), np.asarray(owners, np.int64), self._decode(blobs, dim)

    def iter_embeddings(self, dim: int, batch: int = 50_000) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """All (template ids, embeddings) in id order, in batches (for index rebuilds)."""
        last = -1
        while True:
            with self._lock:
                rows = self._conn.execute(
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


__all__ = [
    "MAX_METADATA_BYTES",
    "Store",
    "Synchronous",
    "decode_cursor",
    "dump_metadata",
    "encode_cursor",
    "validate_identity_id",
]
