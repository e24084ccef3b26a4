"""The shared store: a gallery in PostgreSQL, written and read by any number of server replicas.

``Gallery.open("postgresql://user@db.internal/faces")`` keeps everything the embedded
SQLite store keeps (settings and model binding, identities with JSON metadata, fp32
template embeddings, timestamps) in four tables of the connection's current schema:
``facematch_meta``, ``facematch_identities``, ``facematch_templates`` and the change log
``facematch_changes`` (see :mod:`~facematch.gallery.changes`). psycopg 3 with a connection
pool (``pip install 'facematch[postgres]'``).

- Each write is one transaction, and acknowledged means committed (durable as the
  server's ``synchronous_commit`` makes it; a warning is logged when it is ``off``).
- Identity ids are unique by the ``facematch_identities.name`` constraint: two replicas
  creating the same new identity at once get one success and one
  :class:`~facematch.errors.DuplicateIdentityError`. Template ids come from an identity
  column (a sequence): they increase and are never reused.
- Each write appends its change to ``facematch_changes`` in the same transaction, under
  a lock held to the commit (so sequence numbers follow commit order), and announces it
  with ``NOTIFY`` on a channel named after the database and schema.
- The database being unreachable (down, restarting, out of connections) raises
  :class:`~facematch.errors.StoreUnavailableError` (HTTP 503); the pool reconnects by
  itself when it is back.

Credentials: in the URI, or the usual libpq sources (``PGPASSWORD``, ``~/.pgpass`` /
``PGPASSFILE``, a service file with ``?service=name``); the password is never logged
(:func:`mask_uri`). Several galleries can share one database in separate schemas
(``?options=-csearch_path%3Dgallery2``, the schema created beforehand).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit

import numpy as np

from ..errors import (
    BackendUnavailableError,
    FacematchError,
    GalleryCorruptError,
    GalleryError,
    InvalidArgumentError,
    StoreUnavailableError,
    TemplateNotFoundError,
)
from .changes import CHANGE_KINDS, Change, ChangeKind, ChangeLogStore, LogPosition
from .store import TemplatesWritten, dump_metadata, duplicate_identity, identity_not_found
from .types import IdentityInfo

if TYPE_CHECKING:
    import psycopg

logger = logging.getLogger(__name__)
T = TypeVar("T")

SCHEMA_VERSION = 1
SCHEMES = ("postgresql", "postgres")
DEFAULT_POOL_SIZE = 10
DEFAULT_TIMEOUT_S = 3.0  # wait for a pooled connection (or a new one) before answering "unavailable"
CHANGE_RETENTION_S = 24 * 3600.0  # changes older than this are pruned; a replica further behind resyncs
_PRUNE_EVERY_S = 300.0
_BATCH = 50_000
_PRUNED_KEY = "changes_pruned_through"

_DDL = """
CREATE TABLE IF NOT EXISTS facematch_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS facematch_identities (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name TEXT COLLATE "C" NOT NULL UNIQUE,
    metadata TEXT NOT NULL DEFAULT '{}',
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS facematch_templates (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    identity BIGINT NOT NULL REFERENCES facematch_identities(id) ON DELETE CASCADE,
    embedding BYTEA NOT NULL,
    source TEXT,
    created_at DOUBLE PRECISION NOT NULL
) WITH (toast_tuple_target = 8160);
ALTER TABLE facematch_templates ALTER COLUMN embedding SET STORAGE EXTERNAL;
CREATE INDEX IF NOT EXISTS facematch_templates_identity ON facematch_templates(identity);
CREATE TABLE IF NOT EXISTS facematch_changes (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind TEXT NOT NULL,
    identity BIGINT,
    template_ids BIGINT[] NOT NULL DEFAULT '{}',
    at DOUBLE PRECISION NOT NULL
);
"""
_TABLES = {"facematch_meta", "facematch_identities", "facematch_templates", "facematch_changes"}
# Serialises schema creation by replicas starting at once (any constant; the schema goes in the key).
_DDL_LOCK_SQL = "SELECT pg_advisory_xact_lock(hashtextextended('facematch ddl ' || current_schema(), 0))"
# The change-log append: the lock is taken before the sequence number and held to the commit, so
# sequence numbers follow commit order (a reader of ``seq > last`` never skips a late commit).
_APPEND_SQL = """
WITH serial AS (SELECT pg_advisory_xact_lock(%(lock)s)),
ins AS (
    INSERT INTO facematch_changes(kind, identity, template_ids, at)
    SELECT %(kind)s, %(identity)s, %(tids)s, %(at)s FROM serial RETURNING seq
)
SELECT seq, pg_notify(%(channel)s, seq::text) FROM ins
"""
# An enrolment is one statement (in autocommit: one implicit transaction, one round trip): the
# templates in input order (ids from the sequence, increasing in that order), the log entry last.
_NEW_TEMPLATES = """
tmpl AS (
    INSERT INTO facematch_templates(identity, embedding, source, created_at)
    SELECT ident.id, u.e, u.s, %(now)s
    FROM ident, unnest(%(embs)b::bytea[], %(srcs)s::text[]) WITH ORDINALITY AS u(e, s, o) ORDER BY u.o
    RETURNING id
),
serial AS (SELECT pg_advisory_xact_lock(%(lock)s) FROM ident),
ins AS (
    INSERT INTO facematch_changes(kind, identity, template_ids, at)
    SELECT %(kind)s, (SELECT id FROM ident), (SELECT array_agg(id ORDER BY id) FROM tmpl), %(now)s FROM serial
    RETURNING seq
)
SELECT (SELECT id FROM ident), (SELECT array_agg(id ORDER BY id) FROM tmpl), ins.seq,
    CASE WHEN ins.seq IS NOT NULL THEN pg_notify(%(channel)s, ins.seq::text) END
FROM (SELECT 1) one LEFT JOIN ins ON true
"""
_CREATE_SQL = (
    """WITH ident AS (
    INSERT INTO facematch_identities(name, metadata, created_at, updated_at)
    VALUES (%(name)s, %(meta)s, %(now)s, %(now)s) RETURNING id
),"""
    + _NEW_TEMPLATES
)
# the row lock of the UPDATE keeps a concurrent delete of the identity out until the commit
_ADD_SQL = (
    """WITH ident AS (
    UPDATE facematch_identities SET updated_at = %(now)s WHERE name = %(name)s RETURNING id
),"""
    + _NEW_TEMPLATES
)
_IDENTITY_COLS = "id, name, metadata, created_at, updated_at"
_WITH_TEMPLATES = (
    "COALESCE((SELECT array_agg(t.id ORDER BY t.id) FROM facematch_templates t WHERE t.identity = i.id), '{}')"
)


def is_postgres_uri(value: object) -> bool:
    """True for a ``postgresql://`` (or ``postgres://``) URI."""
    return isinstance(value, str) and value.split("://", 1)[0].lower() in SCHEMES and "://" in value


def mask_uri(uri: str) -> str:
    """The URI with its password (in the user info or a ``password=`` parameter) replaced by ``***``."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return "postgresql://***"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, hosts = netloc.rsplit("@", 1)
        if ":" in userinfo:
            userinfo = userinfo.split(":", 1)[0] + ":***"
        netloc = f"{userinfo}@{hosts}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, "***" if k.lower() == "password" else v) for k, v in pairs], safe="*/:")
    return f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "")


def _psycopg() -> tuple[Any, Any]:
    try:
        import psycopg
        import psycopg_pool
    except ImportError as exc:
        raise BackendUnavailableError(
            "a PostgreSQL gallery needs psycopg 3 and psycopg_pool: pip install 'facematch[postgres]'"
        ) from exc
    return psycopg, psycopg_pool


def _text(value: str | None) -> str | None:
    """PostgreSQL text cannot hold NUL: a source label keeps its other characters."""
    return None if value is None else value.replace("\x00", "\ufffd")


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


class PostgresListener:
    """A ``LISTEN`` connection of its own (autocommit), woken by the store's ``NOTIFY``."""

    def __init__(self, store: PostgresStore) -> None:
        self._store = store
        psycopg = store._pg
        with store._unavailable("listening for changes"):
            self._conn = psycopg.connect(
                store._conninfo, autocommit=True, **store._connect_kwargs, **store._keepalive_kwargs
            )
            self._conn.execute(psycopg.sql.SQL("LISTEN {}").format(psycopg.sql.Identifier(store.channel)))

    def wait(self, timeout: float) -> bool:
        with self._store._unavailable("listening for changes"):
            got = False
            for _ in self._conn.notifies(timeout=max(timeout, 0.0), stop_after=1):
                got = True
            if got:  # drain the backlog: one catch-up covers every announcement
                for _ in self._conn.notifies(timeout=0.0):
                    pass
            return got

    def close(self) -> None:
        self._conn.close()


class PostgresStore(ChangeLogStore):
    """A gallery in PostgreSQL (thread-safe: a connection pool, one connection per call)."""

    def __init__(
        self,
        uri: str,
        *,
        read_only: bool = False,
        create: bool = True,
        pool_size: int = DEFAULT_POOL_SIZE,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        change_retention_s: float = CHANGE_RETENTION_S,
    ) -> None:
        if not is_postgres_uri(uri):
            raise InvalidArgumentError(f"not a PostgreSQL URI: {mask_uri(str(uri))!r}")
        if not isinstance(pool_size, int) or isinstance(pool_size, bool) or pool_size < 1:
            raise InvalidArgumentError(f"pool_size must be a positive integer, got {pool_size!r}")
        self._pg, pool_mod = _psycopg()
        self.location = mask_uri(uri)
        self.read_only = read_only
        self.change_retention_s = float(change_retention_s)
        self._conninfo = uri
        self._unavailable_types: tuple[type[BaseException], ...] = (
            self._pg.OperationalError,
            self._pg.InterfaceError,
            pool_mod.PoolTimeout,
        )
        try:
            params = self._pg.conninfo.conninfo_to_dict(uri)
        except self._pg.ProgrammingError as exc:
            raise InvalidArgumentError(f"invalid PostgreSQL URI {self.location!r}: {_first_line(exc)}") from exc
        # a host that drops packets must not hang a connection attempt for minutes
        self._connect_kwargs: dict[str, Any] = {} if "connect_timeout" in params else {"connect_timeout": 5}
        # the LISTEN connection idles for hours: TCP keepalives find a peer that vanished (polling covers the gap)
        keepalives = {"keepalives_idle": 60, "keepalives_interval": 10}
        self._keepalive_kwargs: dict[str, Any] = {} if any(k.startswith("keepalives") for k in params) else keepalives
        self._meta: dict[str, str] = {}
        self._meta_lock = threading.Lock()
        self._last_prune = time.monotonic()

        self._broken_types = (self._pg.OperationalError, self._pg.InterfaceError)

        def configure(conn: psycopg.Connection[Any]) -> None:
            conn.read_only = read_only

        self._pool = pool_mod.ConnectionPool(
            uri,
            min_size=1,
            max_size=pool_size,
            kwargs={"autocommit": True, **self._connect_kwargs},
            configure=configure,
            timeout=timeout_s,
            reconnect_timeout=max(10.0, 4 * timeout_s),  # give up an attempt, a new request starts another
            name="facematch-gallery",
            open=False,
        )
        try:
            with self._unavailable("opening the gallery"):
                self._pool.open(wait=True, timeout=timeout_s)
            self._prepare(create)
        except BaseException:
            self._pool.close()
            raise

    # ---- connections and errors --------------------------------------------------------------
    @contextmanager
    def _unavailable(self, what: str) -> Iterator[None]:
        """Connection-level failures become ``StoreUnavailableError`` (HTTP 503)."""
        try:
            yield
        except FacematchError:
            raise
        except self._unavailable_types as exc:
            raise StoreUnavailableError(
                f"the gallery database {self.location} is unavailable ({what}): {_first_line(exc)}"
            ) from exc
        except self._pg.errors.ReadOnlySqlTransaction as exc:
            raise GalleryError(f"gallery {self.location} is open read-only") from exc
        except UnicodeEncodeError as exc:
            raise InvalidArgumentError(f"text is not valid Unicode: {exc.reason}") from exc

    def _read(self, what: str, fn: Callable[[psycopg.Cursor[Any]], T], *, binary: bool = False) -> T:
        """``fn(cursor)`` on a pooled autocommit connection (one snapshot per statement).

        Reads are retried on another connection when theirs turns out dead (the server
        restarted, an administrator terminated it): the pool replaces dead connections.
        """
        attempts = self._pool.max_size + 1
        for attempt in range(attempts):
            with self._unavailable(what):
                conn = self._pool.getconn()
                try:
                    with conn.cursor(binary=binary) as cur:
                        return fn(cur)
                except self._broken_types:
                    if conn.broken and attempt + 1 < attempts:
                        continue
                    raise
                finally:
                    self._pool.putconn(conn)  # a broken one is closed and replaced by the pool
        raise AssertionError("unreachable")

    @contextmanager
    def _write(self, what: str) -> Iterator[psycopg.Connection[Any]]:
        """A pooled autocommit connection for a write, checked alive first (one empty round trip).

        A write that fails midway is never retried (it may have committed), so a dead connection
        must be found before the write is sent on it.
        """
        if self.read_only:
            raise GalleryError(f"gallery {self.location} is open read-only")
        with self._unavailable(what):
            for _ in range(self._pool.max_size + 1):
                conn = self._pool.getconn()
                try:
                    conn.execute("")
                    break
                except self._broken_types:
                    self._pool.putconn(conn)  # dead: the pool closes it and opens another
            else:
                raise StoreUnavailableError(f"the gallery database {self.location} keeps dropping connections")
            try:
                yield conn
            finally:
                self._pool.putconn(conn)

    @contextmanager
    def _transaction(self, what: str) -> Iterator[psycopg.Cursor[Any]]:
        """One transaction: committed when the block ends, rolled back on any exception."""
        with self._write(what) as conn, conn.transaction(), conn.cursor() as cur:
            yield cur

    def _prepare(self, create: bool) -> None:
        """Create the tables (writers), check the schema, name the notification channel and the log lock."""
        if create and not self.read_only:
            with self._transaction("creating the tables") as cur:
                cur.execute(_DDL_LOCK_SQL)
                cur.execute(_DDL)  # several statements, no parameters: one simple query
                cur.execute(
                    "INSERT INTO facematch_meta(key, value) VALUES ('schema_version', %s), ('created_at', %s) "
                    "ON CONFLICT (key) DO NOTHING",
                    (str(SCHEMA_VERSION), repr(time.time())),
                )
        row = self._read(
            "opening the gallery",
            lambda cur: cur.execute(
                "SELECT current_database(), current_schema(), "
                "hashtextextended('facematch changes ' || current_schema(), 0), current_setting('synchronous_commit'),"
                " (SELECT array_agg(tablename::text) FROM pg_tables WHERE schemaname = current_schema()"
                "  AND tablename LIKE 'facematch%')"
            ).fetchone(),
        )
        assert row is not None
        database, schema, lock, sync_commit, tables = row
        if not set(tables or ()) >= _TABLES:
            raise GalleryError(f"no gallery at {self.location} (no facematch tables; a writer creates them)")
        self.channel = "facematch_" + _digest(f"{database}.{schema}")
        self._lock_key = int(lock)
        version = self.get_meta("schema_version")
        if version is not None and int(version) > SCHEMA_VERSION:
            raise GalleryError(f"{self.location} has gallery schema {version}, newer than this facematch")
        if str(sync_commit).lower() == "off" and not self.read_only:
            logger.warning(
                "synchronous_commit is off on %s: a database crash can lose acknowledged enrolments", self.location
            )

    def close(self) -> None:
        self._pool.close()

    # ---- the change log --------------------------------------------------------------------------
    def _append(self, cur: psycopg.Cursor[Any], kind: ChangeKind, key: int | None, tids: Sequence[int]) -> int:
        cur.execute(
            _APPEND_SQL,
            {
                "lock": self._lock_key,
                "kind": kind,
                "identity": key,
                "tids": [int(t) for t in tids],
                "at": time.time(),
                "channel": self.channel,
            },
        )
        row = cur.fetchone()
        assert row is not None
        return int(row[0])

    def log_position(self) -> LogPosition:
        row = self._read(
            "reading the change log",
            lambda cur: cur.execute(
                "SELECT GREATEST((SELECT max(seq) FROM facematch_changes),"
                f" (SELECT value::bigint FROM facematch_meta WHERE key = '{_PRUNED_KEY}'), 0),"
                " (SELECT count(*) FROM facematch_identities)"
            ).fetchone(),
        )
        assert row is not None
        return LogPosition(seq=int(row[0]), identities=int(row[1]))

    def changes_since(self, seq: int, limit: int) -> tuple[list[Change], int]:
        # one statement, one snapshot: the pruned-through mark and the changes agree
        rows = self._read(
            "reading the change log",
            lambda cur: cur.execute(
                f"SELECT p.pruned, c.seq, c.kind, c.identity, c.template_ids FROM "
                f"(SELECT (SELECT value::bigint FROM facematch_meta WHERE key = '{_PRUNED_KEY}') AS pruned) p "
                "LEFT JOIN LATERAL (SELECT * FROM facematch_changes WHERE seq > %s ORDER BY seq LIMIT %s) c ON true "
                "ORDER BY c.seq",
                (int(seq), int(limit)),
            ).fetchall(),
        )
        pruned = int(rows[0][0]) if rows and rows[0][0] is not None else 0
        changes = []
        for _, s, kind, key, tids in rows:
            if s is None:
                continue
            if kind not in CHANGE_KINDS:
                raise GalleryCorruptError(f"change {s} in {self.location} has an unknown kind {kind!r}")
            changes.append(Change(int(s), kind, None if key is None else int(key), tuple(int(t) for t in tids)))
        return changes, pruned

    def listen(self) -> PostgresListener:
        return PostgresListener(self)

    def forget_settings(self) -> None:
        with self._meta_lock:
            self._meta.clear()

    def prune_changes(self, older_than_s: float | None = None) -> int:
        """Delete changes older than ``older_than_s`` (default: the retention); returns how many."""
        age = self.change_retention_s if older_than_s is None else float(older_than_s)
        with self._transaction("pruning the change log") as cur:
            cur.execute("DELETE FROM facematch_changes WHERE at < %s RETURNING seq", (time.time() - age,))
            seqs = [int(r[0]) for r in cur.fetchall()]
            if seqs:
                cur.execute(
                    "INSERT INTO facematch_meta(key, value) VALUES (%s, %s) ON CONFLICT (key) DO UPDATE "
                    "SET value = GREATEST(facematch_meta.value::bigint, EXCLUDED.value::bigint)::text",
                    (_PRUNED_KEY, str(max(seqs))),
                )
        if seqs:
            logger.info("pruned %d changes (through %d) from %s", len(seqs), max(seqs), self.location)
        return len(seqs)

    def _maybe_prune(self) -> None:
        now = time.monotonic()
        if now - self._last_prune < _PRUNE_EVERY_S:
            return
        self._last_prune = now
        try:
            self.prune_changes()
        except FacematchError as exc:  # pruning is housekeeping: the next writer tries again
            logger.info("pruning the change log of %s failed: %s", self.location, exc)

    # ---- settings --------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        with self._meta_lock:
            if key in self._meta:
                return self._meta[key]
        row = self._read(
            "reading settings",
            lambda cur: cur.execute("SELECT value FROM facematch_meta WHERE key = %s", (key,)).fetchone(),
        )
        if row is None:
            return None  # absent keys are not cached: another process may set them
        with self._meta_lock:
            self._meta[key] = str(row[0])
        return str(row[0])

    def set_meta(self, values: Mapping[str, str]) -> None:
        with self._transaction("writing settings") as cur:
            changed = 0
            for k, v in values.items():
                cur.execute(
                    "INSERT INTO facematch_meta(key, value) VALUES (%s, %s) ON CONFLICT (key) DO UPDATE "
                    "SET value = EXCLUDED.value WHERE facematch_meta.value IS DISTINCT FROM EXCLUDED.value",
                    (k, v),
                )
                changed += cur.rowcount
            if changed:
                self._append(cur, "settings_changed", None, ())
        with self._meta_lock:
            self._meta.update(values)

    def init_meta(self, values: Mapping[str, str]) -> dict[str, str]:
        with self._transaction("writing settings") as cur:
            changed = 0
            for k, v in values.items():
                cur.execute(
                    "INSERT INTO facematch_meta(key, value) VALUES (%s, %s) ON CONFLICT (key) DO NOTHING", (k, v)
                )
                changed += cur.rowcount
            if changed:
                self._append(cur, "settings_changed", None, ())
            cur.execute("SELECT key, value FROM facematch_meta WHERE key = ANY(%s)", (list(values),))
            stored = {str(k): str(v) for k, v in cur.fetchall()}
        with self._meta_lock:
            self._meta.update(stored)
        return stored

    # ---- identities ------------------------------------------------------------------------
    def identity_key(self, identity_id: str) -> int | None:
        row = self._read(
            "reading an identity",
            lambda cur: cur.execute("SELECT id FROM facematch_identities WHERE name = %s", (identity_id,)).fetchone(),
        )
        return None if row is None else int(row[0])

    @staticmethod
    def _info(row: Sequence[Any]) -> IdentityInfo:
        return IdentityInfo(
            identity_id=str(row[1]),
            template_ids=tuple(int(t) for t in row[5]),
            metadata=json.loads(row[2]),
            created_at=float(row[3]),
            updated_at=float(row[4]),
        )

    def get_identity(self, identity_id: str) -> IdentityInfo | None:
        row = self._read(
            "reading an identity",
            lambda cur: cur.execute(
                f"SELECT {_IDENTITY_COLS}, {_WITH_TEMPLATES} FROM facematch_identities i WHERE name = %s",
                (identity_id,),
            ).fetchone(),
        )
        return None if row is None else self._info(row)

    def list_identities(self, after: str | None, limit: int) -> list[IdentityInfo]:
        where = "" if after is None else "WHERE name > %(after)s"
        rows = self._read(
            "listing identities",
            lambda cur: cur.execute(
                f"SELECT {_IDENTITY_COLS}, {_WITH_TEMPLATES} FROM "
                f"(SELECT {_IDENTITY_COLS} FROM facematch_identities {where} ORDER BY name LIMIT %(limit)s) i "
                "ORDER BY name",
                {"after": after, "limit": int(limit)},
            ).fetchall(),
        )
        return [self._info(r) for r in rows]

    def identities_by_key(self, keys: Sequence[int]) -> dict[int, tuple[str, dict[str, Any]]]:
        wanted = sorted(set(int(k) for k in keys))
        if not wanted:
            return {}
        rows = self._read(
            "reading identities",
            lambda cur: cur.execute(
                "SELECT id, name, metadata FROM facematch_identities WHERE id = ANY(%s)", (wanted,)
            ).fetchall(),
        )
        return {int(r[0]): (str(r[1]), json.loads(r[2])) for r in rows}

    def counts(self) -> tuple[int, int]:
        row = self._read(
            "counting",
            lambda cur: cur.execute(
                "SELECT (SELECT count(*) FROM facematch_identities), (SELECT count(*) FROM facematch_templates)"
            ).fetchone(),
        )
        assert row is not None
        return int(row[0]), int(row[1])

    # ---- templates -------------------------------------------------------------------------
    def _copy(self, query: Any, what: str) -> bytes:
        """The binary ``COPY (query) TO STDOUT`` of a query, as one buffer."""
        statement = self._pg.sql.SQL("COPY ({}) TO STDOUT (FORMAT BINARY)").format(query)

        def copy_out(cur: psycopg.Cursor[Any]) -> bytes:
            buf = bytearray()
            with cur.copy(statement) as copy:
                for chunk in copy:
                    buf += chunk
            return bytes(buf)

        return self._read(what, copy_out)

    def template_owners(self) -> tuple[np.ndarray, np.ndarray]:
        # two packed columns in one row (8 bytes per value, big-endian): no per-row Python objects.
        # Both aggregates read the rows in the same order, so the columns stay aligned; sorted here.
        def read(cur: psycopg.Cursor[Any]) -> Any:
            return cur.execute(
                "SELECT string_agg(int8send(id), ''::bytea), string_agg(int8send(identity), ''::bytea) "
                "FROM facematch_templates",
                binary=True,
            ).fetchone()

        row = self._read("reading templates", read, binary=True)
        if row is None or row[0] is None:
            return np.zeros((0,), np.int64), np.zeros((0,), np.int64)
        ids, owners = np.frombuffer(row[0], ">i8").astype(np.int64), np.frombuffer(row[1], ">i8").astype(np.int64)
        order = np.argsort(ids, kind="stable")
        return ids[order], owners[order]

    def embeddings(self, template_ids: Sequence[int], dim: int) -> tuple[np.ndarray, np.ndarray]:
        wanted = sorted(set(int(t) for t in template_ids))
        if not wanted:
            return np.zeros((0,), np.int64), np.zeros((0, dim), np.float32)
        rows = self._read(
            "reading templates",
            lambda cur: cur.execute(
                "SELECT id, embedding FROM facematch_templates WHERE id = ANY(%s) ORDER BY id", (wanted,), binary=True
            ).fetchall(),
            binary=True,
        )
        return np.asarray([r[0] for r in rows], np.int64), self._decode([r[1] for r in rows], dim)

    def embeddings_of_identities(self, keys: Sequence[int], dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        wanted = sorted(set(int(k) for k in keys))
        if not wanted:
            return np.zeros((0,), np.int64), np.zeros((0,), np.int64), np.zeros((0, dim), np.float32)
        rows = self._read(
            "reading templates",
            lambda cur: cur.execute(
                "SELECT id, identity, embedding FROM facematch_templates WHERE identity = ANY(%s)",
                (wanted,),
                binary=True,
            ).fetchall(),
            binary=True,
        )
        return (
            np.asarray([r[0] for r in rows], np.int64),
            np.asarray([r[1] for r in rows], np.int64),
            self._decode([r[2] for r in rows], dim),
        )

    def template_sources(self, template_ids: Sequence[int]) -> dict[int, str | None]:
        wanted = sorted(set(int(t) for t in template_ids))
        if not wanted:
            return {}
        rows = self._read(
            "reading templates",
            lambda cur: cur.execute(
                "SELECT id, source FROM facematch_templates WHERE id = ANY(%s)", (wanted,)
            ).fetchall(),
        )
        return {int(r[0]): None if r[1] is None else str(r[1]) for r in rows}

    def iter_embeddings(self, dim: int, batch: int = _BATCH) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        # binary COPY, parsed by numpy: the fastest of the ways measured (a fetch, a string_agg)
        sql = self._pg.sql
        last = -1
        while True:
            query = sql.SQL("SELECT id, embedding FROM facematch_templates WHERE id > {} ORDER BY id LIMIT {}").format(
                sql.Literal(last), sql.Literal(int(batch))
            )
            rows = _binary_rows(self._copy(query, "reading templates"), [("id", ">i8"), ("vec", "<f4", (dim,))])
            if rows is None:
                raise GalleryCorruptError(f"stored embeddings in {self.location} do not have dimension {dim}")
            if rows.size == 0:
                return
            last = int(rows["id"][-1])
            yield rows["id"].astype(np.int64), np.ascontiguousarray(rows["vec"], dtype=np.float32)

    def _decode(self, blobs: list[bytes], dim: int) -> np.ndarray:
        if not blobs:
            return np.zeros((0, dim), np.float32)
        joined = b"".join(blobs)
        if len(joined) != len(blobs) * dim * 4:
            raise GalleryCorruptError(f"stored embeddings in {self.location} do not have dimension {dim}")
        return np.frombuffer(joined, dtype="<f4").reshape(len(blobs), dim).astype(np.float32)

    # ---- writes ----------------------------------------------------------------------------
    def _enrol(
        self, sql: str, kind: ChangeKind, identity_id: str, emb: np.ndarray, sources: Sequence[str | None], meta: str
    ) -> TemplatesWritten:
        params = {
            "name": identity_id,
            "meta": meta,
            "now": time.time(),
            "embs": [vec.tobytes() for vec in emb],
            "srcs": [_text(src) for src in sources],
            "lock": self._lock_key,
            "kind": kind,
            "channel": self.channel,
        }
        with self._write("enrolling") as conn:
            row = conn.execute(sql, params).fetchone()
        assert row is not None
        key, tids, seq = row[0], row[1], row[2]
        if key is None:
            raise identity_not_found(identity_id)
        if seq is None or tids is None or len(tids) != len(emb):
            raise GalleryCorruptError(f"enrolment in {self.location} wrote {tids!r} for {len(emb)} templates")
        self._maybe_prune()
        return TemplatesWritten(int(key), tuple(int(t) for t in tids), seq=int(seq))

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
        try:
            return self._enrol(_CREATE_SQL, "identity_created", identity_id, emb, sources, meta_json)
        except self._pg.errors.UniqueViolation as exc:
            if exc.diag.constraint_name == "facematch_identities_name_key":
                raise duplicate_identity(identity_id) from exc
            raise

    def add_templates(
        self, identity_id: str, embeddings: np.ndarray, sources: Sequence[str | None]
    ) -> TemplatesWritten:
        emb = _check_rows(embeddings, sources)
        return self._enrol(_ADD_SQL, "templates_added", identity_id, emb, sources, "")

    def delete_identity(self, identity_id: str) -> IdentityInfo:
        with self._transaction("deleting") as cur:
            cur.execute(f"SELECT {_IDENTITY_COLS} FROM facematch_identities WHERE name = %s FOR UPDATE", (identity_id,))
            row = cur.fetchone()
            if row is None:
                raise identity_not_found(identity_id)
            key = int(row[0])
            cur.execute("DELETE FROM facematch_templates WHERE identity = %s RETURNING id", (key,))
            tids = sorted(int(r[0]) for r in cur.fetchall())
            cur.execute("DELETE FROM facematch_identities WHERE id = %s", (key,))
            self._append(cur, "identity_deleted", key, tids)
        return self._info((*row, tids))

    def delete_template(self, template_id: int) -> str:
        with self._transaction("deleting") as cur:
            cur.execute(
                "DELETE FROM facematch_templates t USING facematch_identities i "
                "WHERE t.id = %s AND i.id = t.identity RETURNING i.name, i.id",
                (int(template_id),),
            )
            row = cur.fetchone()
            if row is None:
                raise TemplateNotFoundError(f"no template {template_id}", template_id=int(template_id))
            self._append(cur, "templates_removed", int(row[1]), [int(template_id)])
        return str(row[0])

    def set_metadata(self, identity_id: str, metadata: dict[str, Any]) -> IdentityInfo:
        text = dump_metadata(metadata)
        with self._transaction("writing metadata") as cur:
            cur.execute(
                f"UPDATE facematch_identities i SET metadata = %s, updated_at = %s WHERE name = %s "
                f"RETURNING {_IDENTITY_COLS}, {_WITH_TEMPLATES}",
                (text, time.time(), identity_id),
            )
            row = cur.fetchone()
            if row is None:
                raise identity_not_found(identity_id)
            self._append(cur, "metadata_changed", int(row[0]), ())
        return self._info(row)


def _check_rows(embeddings: np.ndarray, sources: Sequence[str | None]) -> np.ndarray:
    emb = np.ascontiguousarray(embeddings, dtype="<f4")
    if emb.ndim != 2 or emb.shape[0] != len(sources):
        raise InvalidArgumentError(f"{len(sources)} sources for embeddings of shape {emb.shape}")
    return emb


def _digest(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00"


def _binary_rows(data: bytes, fields: list[tuple[Any, ...]]) -> np.ndarray | None:
    """A binary ``COPY`` of fixed-width, non-null columns as a structured array (``None``: other widths).

    Each row is an int16 field count, then per field an int32 length and the value
    (big-endian integers; embeddings are stored little-endian fp32).
    """
    if not data.startswith(_COPY_HEADER) or len(data) < 21:
        return None
    ext = int.from_bytes(data[15:19], "big")
    body = data[19 + ext : -2]  # header (signature, flags, extension) ... trailer (-1)
    layout: list[tuple[Any, ...]] = [("n", ">i2")]
    widths = []
    for i, f in enumerate(fields):
        layout.append((f"len{i}", ">i4"))
        layout.append(f)
        widths.append(np.dtype(f[1]).itemsize * (int(np.prod(f[2])) if len(f) > 2 else 1))
    dtype = np.dtype(layout)
    if len(body) % dtype.itemsize:
        return None
    rows = np.frombuffer(body, dtype=dtype)
    if rows.size and (
        np.any(rows["n"] != len(fields)) or any(np.any(rows[f"len{i}"] != w) for i, w in enumerate(widths))
    ):
        return None
    return rows


__all__ = [
    "CHANGE_RETENTION_S",
    "DEFAULT_POOL_SIZE",
    "SCHEMA_VERSION",
    "PostgresListener",
    "PostgresStore",
    "is_postgres_uri",
    "mask_uri",
]
