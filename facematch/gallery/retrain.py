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

CHILD_BATCH = 16_384  # rows per store read in the child (no lock to share there)
CHILD_NICE = 10  # the child's priority step below the gallery's process
POLL_S = 0.25  # how often the waiting thread checks for a cancelled retrain
_ERR_TAIL = 2000  # characters of the child's stderr kept in the error


class RetrainChildError(RuntimeError):
    """The retrain child did not produce an index (it failed, or could not start)."""


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


__all__ = ["RetrainChildError", "build_in_child"]
