"""The change log of a shared store, and how each replica keeps its derived index in step with it.

Several server processes (replicas) can share one gallery when its store is a database
server (:class:`~facematch.gallery.postgres_store.PostgresStore`). Every write appends one
row to the store's change log *in the same transaction* as the change itself, under a
monotonically increasing sequence number:

============================  ===================================================
``identity_created``          an identity and its first templates (identity key, template ids)
``templates_added``           templates added to an existing identity
``templates_removed``         one template removed (the identity is kept)
``identity_deleted``          an identity and all its templates removed
``metadata_changed``          an identity's metadata replaced (no index effect)
``settings_changed``          gallery settings (model binding, backend, index configuration)
============================  ===================================================

The store hands out sequence numbers in commit order (the append takes a lock held to
the commit), so any read of the log sees a gap-free prefix of it: a replica that applied
everything up to ``seq`` reads ``seq > last`` and never misses a change.

A replica (:class:`ChangeFeed`) starts from the log position and the store's content,
then applies what changed since (applying twice is harmless: template ids are never
reused, so an add always precedes its remove). :class:`ChangeFollower` is the background
thread that wakes on the store's notifications (PostgreSQL ``LISTEN``/``NOTIFY``) and, as a
fallback, every ``poll_s`` seconds: a committed change is in every running replica's
index within about ``poll_s`` (plus the time to apply it) even when notifications are lost.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np

from ..errors import FacematchError
from .store import Store

if TYPE_CHECKING:
    from .sync import IndexSync

logger = logging.getLogger(__name__)

ChangeKind = Literal[
    "identity_created",
    "templates_added",
    "templates_removed",
    "identity_deleted",
    "metadata_changed",
    "settings_changed",
]
CHANGE_KINDS: tuple[ChangeKind, ...] = (
    "identity_created",
    "templates_added",
    "templates_removed",
    "identity_deleted",
    "metadata_changed",
    "settings_changed",
)
_ADDS = ("identity_created", "templates_added")
_REMOVES = ("templates_removed", "identity_deleted")
_IDENTITY_DELTA = {"identity_created": 1, "identity_deleted": -1}
BATCH = 10_000  # changes read per query while catching up
DEFAULT_POLL_S = 1.0
_WAIT_SLICE_S = 0.25  # the follower checks for close() at least this often
_MAX_BACKOFF_S = 10.0


@dataclass(frozen=True)
class Change:
    """One committed change: its sequence number, kind, identity key and template ids."""

    seq: int
    kind: ChangeKind
    identity_key: int | None
    template_ids: tuple[int, ...]


@dataclass(frozen=True)
class LogPosition:
    """The last change's sequence number and the identity count, read from one snapshot."""

    seq: int
    identities: int


class ChangeListener(Protocol):
    """A connection that is told when a change is committed (PostgreSQL ``LISTEN``)."""

    def wait(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds; True when a change was announced."""

    def close(self) -> None: ...


class ChangeLogStore(Store):
    """A store that several processes write at once: each write also appends to its change log."""

    @abstractmethod
    def log_position(self) -> LogPosition:
        """Where the log stands now (one snapshot: the identity count matches the sequence number)."""

    @abstractmethod
    def changes_since(self, seq: int, limit: int) -> tuple[list[Change], int]:
        """Up to ``limit`` changes after ``seq``, in order, and the sequence number the log is pruned through.

        A reader whose ``seq`` is below the pruned-through number has missed changes and must resync.
        """

    @abstractmethod
    def listen(self) -> ChangeListener:
        """A new listener (its own connection); ``StoreUnavailableError`` when the database is down."""

    @abstractmethod
    def forget_settings(self) -> None:
        """Drop cached settings (another process changed them)."""


@dataclass(frozen=True)
class OwnWrite:
    """What this process just committed, so catching up does not read its vectors back.

    ``change`` is the write's own log entry: when it directly follows the replica's position
    (nobody else wrote in between) it is applied without reading the log.
    """

    template_ids: np.ndarray
    vectors: np.ndarray
    change: Change | None = None


class ChangeFeed:
    """A replica's position in the change log, and the application of changes to its derived index.

    ``catch_up`` reads the log outside the gallery lock (a slow or absent database never
    blocks searches) and applies it under ``lock``; catch-ups run one at a time.
    """

    def __init__(self, store: ChangeLogStore, lock: threading.RLock) -> None:
        self.store = store
        self._lock = lock
        self._feed_lock = threading.Lock()
        position = store.log_position()
        self.seq = position.seq
        self.identities = position.identities
        self.resyncs = 0

    def catch_up(self, sync: IndexSync, own: OwnWrite | None = None) -> bool:
        """Apply every change committed after ``self.seq``. True when any was applied."""
        changed = False
        with self._feed_lock:
            if own is not None and own.change is not None and own.change.seq == self.seq + 1:
                self._apply(sync, [own.change], own)  # sequence numbers follow commits: nothing came between
                return True
            while True:
                changes, pruned = self.store.changes_since(self.seq, BATCH)
                if pruned > self.seq:
                    self._resync(sync, pruned)
                    changed = True
                    continue
                if not changes:
                    return changed
                self._apply(sync, changes, own)
                changed = True
                if len(changes) < BATCH:
                    return changed

    def _resync(self, sync: IndexSync, pruned: int) -> None:
        """The log was pruned past this replica's position: re-read the whole store."""
        logger.warning(
            "change log pruned through %d, past this replica's position %d: resyncing from the store", pruned, self.seq
        )
        position = self.store.log_position()
        with self._lock:
            sync.reload()
            self.seq, self.identities = position.seq, position.identities
            self.resyncs += 1

    def _apply(self, sync: IndexSync, changes: list[Change], own: OwnWrite | None) -> None:
        removed: set[int] = set()
        added: dict[int, list[int]] = {}
        delta = 0
        settings = False
        for c in changes:
            delta += _IDENTITY_DELTA.get(c.kind, 0)
            if c.kind in _REMOVES:
                removed.update(c.template_ids)
            elif c.kind in _ADDS and c.identity_key is not None:
                added.setdefault(c.identity_key, []).extend(c.template_ids)
            elif c.kind == "settings_changed":
                settings = True
        # ids are never reused: an id added and removed in this batch is simply gone
        adds = {k: np.asarray([t for t in v if t not in removed], np.int64) for k, v in added.items()}
        adds = {k: v for k, v in adds.items() if v.size}
        vectors = self._vectors(sync, adds, own)
        if settings:
            self.store.forget_settings()
        with self._lock:
            if changes[-1].seq <= self.seq:
                return  # another catch-up applied these meanwhile (cannot happen under the feed lock)
            sync.follow(adds, np.asarray(sorted(removed), np.int64), vectors)
            self.seq = changes[-1].seq
            self.identities += delta

    def _vectors(self, sync: IndexSync, adds: dict[int, np.ndarray], own: OwnWrite | None) -> dict[int, np.ndarray]:
        """template id -> fp32 vector of the added templates this replica's index lacks (read outside the lock)."""
        if sync.index is None or sync.dim is None or sync.index.shared or not adds:
            return {}
        wanted = np.concatenate(list(adds.values()))
        wanted = wanted[sync.owners.lookup(wanted) < 0]
        out: dict[int, np.ndarray] = {}
        if own is not None:
            mine = np.isin(wanted, own.template_ids)
            pos = {int(t): i for i, t in enumerate(own.template_ids.tolist())}
            for t in wanted[mine].tolist():
                out[int(t)] = own.vectors[pos[int(t)]]
            wanted = wanted[~mine]
        for i in range(0, wanted.size, 50_000):
            ids, vecs = self.store.embeddings(wanted[i : i + 50_000].tolist(), sync.dim)
            out.update(zip(ids.tolist(), vecs, strict=True))
        return out


class ChangeFollower:
    """A daemon thread that runs ``catch_up`` when the store announces a change, and every ``poll_s``.

    With ``listen=False`` (e.g. behind a pooler in transaction mode, where ``LISTEN`` does
    not work) it only polls. Failures (the database down) are logged and retried with a
    growing pause; the thread stops at :meth:`close`.
    """

    def __init__(
        self,
        store: ChangeLogStore,
        catch_up: Callable[[], object],
        *,
        poll_s: float = DEFAULT_POLL_S,
        listen: bool = True,
        name: str = "facematch-changes",
    ) -> None:
        self.store = store
        self._catch_up = catch_up
        self.poll_s = float(poll_s)
        self.listen = listen
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.failures = 0
        self.last_catch_up = 0.0  # monotonic time of the last successful catch-up

    def start(self) -> None:
        self._thread.start()

    def close(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def _run(self) -> None:
        listener: ChangeListener | None = None
        next_poll = time.monotonic() + self.poll_s
        try:
            while not self._stop.is_set():
                try:
                    due = False
                    if self.listen and listener is None:
                        listener = self.store.listen()
                        due = True  # announcements sent while we were not listening are lost: catch up now
                    if not due:
                        wait = max(0.0, min(next_poll - time.monotonic(), _WAIT_SLICE_S))
                        if listener is not None:
                            due = listener.wait(wait)
                        else:
                            self._stop.wait(wait)
                    if self._stop.is_set():
                        return
                    if due or time.monotonic() >= next_poll:
                        self._catch_up()
                        self.last_catch_up = time.monotonic()
                        next_poll = self.last_catch_up + self.poll_s
                    if self.failures:
                        logger.info("following the gallery's change log again")
                    self.failures = 0
                except Exception as exc:  # the database down, a dropped connection, ...: keep following
                    self.failures += 1
                    known = isinstance(exc, FacematchError)
                    if self.failures == 1:
                        logger.warning("following the gallery's change log failed (will retry): %s", _short(exc))
                    elif not known:
                        logger.debug("change follower failure %d", self.failures, exc_info=exc)
                    if listener is not None:
                        _close_quietly(listener)
                        listener = None
                    self._stop.wait(min(self.poll_s * 2 ** min(self.failures - 1, 6), _MAX_BACKOFF_S))
                    next_poll = time.monotonic()
        finally:
            if listener is not None:
                _close_quietly(listener)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def _close_quietly(listener: ChangeListener) -> None:
    try:
        listener.close()
    except Exception as exc:  # closing a broken connection is not an error
        logger.debug("closing the change listener: %s", exc)


__all__ = [
    "BATCH",
    "CHANGE_KINDS",
    "DEFAULT_POLL_S",
    "Change",
    "ChangeFeed",
    "ChangeFollower",
    "ChangeKind",
    "ChangeListener",
    "ChangeLogStore",
    "LogPosition",
    "OwnWrite",
]
