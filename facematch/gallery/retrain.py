"""A background retrain's index, built in a child process (``python -m facematch.gallery.retrain``).

Building a new index from a million stored templates is mostly C++ (FAISS k-means and
encoding, SQLite reads), which runs beside the enrolments; but the Python around it
(turning SQLite rows into arrays, batching, filtering by the snapshot) holds the
interpreter lock, and every enrolment waiting for that lock waits up to CPython's switch
interval (5 ms). At 1M templates that made enrolment p99 8x its p50 while a retrain ran.
A child process has its own interpreter: it opens the SQLite file read-only (WAL lets it
read beside the writer), builds the index of the snapshot's templates with the same code
an in-process rebuild uses (:func:`~facematch.gallery.sync.fill`), saves it into a temporary
directory and exits; the parent's retrain thread only waits for it, loads the file
(FAISS's reader, outside the lock) and replays the writes made since the snapshot.

Stores another process cannot open by path (PostgreSQL: a DSN with credentials the
gallery does not hand on) keep the in-process build, as does any gallery where the child
cannot start or fails (logged; the build then runs in the thread).

The writes made while the new index is built are kept in a :class:`WriteLog`: template ids
in memory, the added embeddings in an unlinked temporary file, so a bulk load beside a long
retrain does not hold every embedding it wrote twice in memory until the swap.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from .config import IndexConfig
from .index import FaissIndex

logger = logging.getLogger(__name__)

REPLAY_CHUNK = 4096  # templates per index call when logged writes are replayed onto the new index
CHILD_BATCH = 16_384  # rows per store read in the child (no lock to share there)
CHILD_NICE = 10  # the child's priority step below the gallery's process
POLL_S = 0.25  # how often the waiting thread checks for a cancelled retrain
_ERR_TAIL = 2000  # characters of the child's stderr kept in the error


class RetrainChildError(RuntimeError):
    """The retrain child did not produce an index (it failed, or could not start)."""


class WriteLog:
    """The writes made since a retrain's snapshot, in order: ``add`` (template ids and their
    embeddings) and ``remove`` (ids).

    Ids stay in memory (8 bytes a template); embeddings go to an unlinked temporary file
    (``dir``: where; the system's temporary directory by default), unbuffered, so the page
    cache holds them rather than the process, and one positional read (``pread``, POSIX) gets
    back a run of adds.
    Appends come from writers holding the gallery's lock; :meth:`replay` runs in the retrain
    thread beside them and reads only entries already appended. Raises ``OSError`` when the
    file cannot be created or written (the caller drops the retrain, never the write).
    """

    def __init__(self, dim: int, dir: Path | None = None) -> None:
        self.dim = dim
        self._row_bytes = dim * 4
        self._entries: list[tuple[bool, np.ndarray, int]] = []  # (is an add, ids, first row in the file)
        self._rows = 0  # embeddings in the file
        self._file = tempfile.TemporaryFile(prefix="facematch-retrain-log-", dir=dir, buffering=0)  # noqa: SIM115 - lives until close()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def templates(self) -> int:
        """Templates added since the snapshot (rows in the file)."""
        return self._rows

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        ids = np.array(ids, np.int64)
        data = np.ascontiguousarray(vectors, np.float32).reshape(ids.size, self.dim).tobytes()
        offset = self._rows * self._row_bytes
        written = 0
        while written < len(data):  # pwrite: appends even while replay reads the file
            written += os.pwrite(self._file.fileno(), data[written:], offset + written)
        self._entries.append((True, ids, self._rows))
        self._rows += ids.size

    def remove(self, ids: np.ndarray) -> None:
        self._entries.append((False, np.array(ids, np.int64), -1))

    def _vectors(self, first_row: int, n: int) -> np.ndarray:
        size, offset = n * self._row_bytes, first_row * self._row_bytes
        buf = bytearray(size)
        done = 0
        while done < size:  # pread: no shared file position with the writers
            chunk = os.pread(self._file.fileno(), size - done, offset + done)
            if not chunk:
                raise OSError(f"retrain log: {size - done} bytes missing at row {first_row}")
            buf[done : done + len(chunk)] = chunk
            done += len(chunk)
        return np.frombuffer(buf, np.float32).reshape(n, self.dim)

    def replay(self, index: FaissIndex, start: int, stop: int, *, threads: int | None = None) -> None:
        """Apply entries ``start:stop`` to ``index`` in order, consecutive adds (or removes) together
        in calls of up to ``REPLAY_CHUNK`` templates: a bulk load logs one entry per enrolment (tens
        of thousands while a large retrain runs), and one index call per entry is that many trips
        through Python."""
        entries = self._entries
        while start < stop:
            is_add = entries[start][0]
            end, size = start, 0
            while end < stop and entries[end][0] == is_add and (end == start or size < REPLAY_CHUNK):
                size += entries[end][1].size
                end += 1
            ids = np.concatenate([e[1] for e in entries[start:end]])
            if is_add:  # the run's embeddings are consecutive rows of the file
                index.add(ids, self._vectors(entries[start][2], ids.size), threads=threads)
            else:
                index.remove(ids)
            start = end

    def close(self) -> None:
        self._file.close()


def build_in_child(
    db_path: Path,
    dim: int,
    config: IndexConfig,
    snapshot: np.ndarray,
    directory: Path | None,
    *,
    threads: int,
    cancelled: Callable[[], bool],
) -> FaissIndex | None:
    """A new index of the ``snapshot`` template ids of the SQLite store at ``db_path``, built in a
    child process; ``None`` when ``cancelled()`` stopped it. ``directory``: where the new index
    saves itself (the gallery's). Raises :class:`RetrainChildError` when the child fails."""
    with tempfile.TemporaryDirectory(prefix="facematch-retrain-") as tmp:
        out = Path(tmp)
        np.save(out / "snapshot.npy", np.asarray(snapshot, np.int64))
        args = [str(db_path), str(dim), json.dumps(config.to_dict()), str(out), str(threads), str(os.getpid())]
        package_root = str(Path(__file__).resolve().parents[2])  # the child imports this very facematch
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "facematch.gallery.retrain", *args],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
            )
        except (OSError, ValueError) as exc:
            raise RetrainChildError(f"could not start the retrain process: {exc}") from exc
        while True:
            try:
                _, err = proc.communicate(timeout=POLL_S)
                break
            except subprocess.TimeoutExpired:
                if cancelled():
                    proc.kill()
                    proc.communicate()
                    return None
        if proc.returncode != 0:
            tail = err.decode("utf-8", "replace")[-_ERR_TAIL:].strip()
            raise RetrainChildError(f"the retrain process exited with {proc.returncode}: {tail}")
        new = FaissIndex.load(out, dim, config, check_ids=False)  # the child's exit says the save completed
        if new is None:
            raise RetrainChildError("the retrain process left no usable index")
        new.directory = directory
        return new


def _child(argv: list[str]) -> int:
    from ..errors import FacematchError
    from .index import import_faiss
    from .sqlite_store import SQLiteStore
    from .sync import fill
    from .threads import faiss_threads

    db_path, dim_s, config_json, out_s, threads_s, parent_s = argv
    with contextlib.suppress(OSError):  # not permitted: the child keeps the parent's priority
        os.nice(CHILD_NICE)
    dim, out, parent = int(dim_s), Path(out_s), int(parent_s)
    config = replace(IndexConfig.from_dict(json.loads(config_json)), device="cpu")  # the parent mirrors to a GPU
    snapshot = np.load(out / "snapshot.npy")
    store = SQLiteStore(Path(db_path), read_only=True)
    try:
        with faiss_threads(import_faiss(), max(1, int(threads_s))):
            index = FaissIndex(dim, config, out)
            orphaned = lambda: os.getppid() != parent  # noqa: E731 - the parent died: stop at the next batch
            if not fill(index, store, dim, snapshot, batch=CHILD_BATCH, cancelled=orphaned) or orphaned():
                shutil.rmtree(out, ignore_errors=True)  # nobody will read it (nor remove it)
                return 3
            index.save()
    except FacematchError as exc:
        sys.stderr.write(f"retrain failed: {exc}\n")  # the parent logs the child's stderr
        return 2
    finally:
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1:]))


__all__ = ["REPLAY_CHUNK", "RetrainChildError", "WriteLog", "build_in_child"]
