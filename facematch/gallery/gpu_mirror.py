"""The FAISS index's GPU mirror: a GPU copy kept in step incrementally, rebuilt off the request path.

The CPU index (:class:`~facematch.gallery.index.FaissIndex`) stays the reference; the mirror
only answers searches. It follows the CPU index's changes:

- **add**: appended in place (``GpuIndexFlat.add``, whose positions are mapped to template
  ids by a host array, or ``GpuIndexIVF.add_with_ids``): no copy of the index;
- **remove**: the ids are *tombstoned* (over-fetched and filtered out of results), so a
  removal never waits for the GPU; once tombstones pass ``TOMBSTONE_FRACTION`` of the mirror
  (or the over-fetch would pass FAISS-GPU's ``k`` limit) a fresh copy is made in a background
  thread and swapped in, while searches keep using the old one;
- **rebuild** (a retrained structure): the mirror is dropped (searches run on CPU) and
  rebuilt in the background.

Each copy owns its own ``StandardGpuResources`` (they are not thread-safe), and the
background copy holds ``cpu_lock`` while it reads the CPU index and swaps the copy in; the
index changes the CPU index *and* calls :meth:`GpuMirror.added` / :meth:`removed` under that
lock, so no change is lost or applied twice around a copy.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

GPU_MAX_K = 2048  # FAISS-GPU's largest k (and IVF nprobe) per search
TOMBSTONE_FRACTION = 0.1


class _Copy:
    """One GPU copy: its resources, index, position → id map (flat) and tombstones."""

    def __init__(self, res: Any, index: Any, ids: np.ndarray | None) -> None:
        self.res = res
        self.index = index
        self.ids = ids  # None: the GPU index holds the template ids itself (IVF)
        self.tombstones: set[int] = set()
        self.count = int(index.ntotal)


class GpuMirror:
    """A GPU copy of a CPU FAISS index (see the module docstring)."""

    def __init__(
        self,
        faiss: Any,
        source: Callable[[], tuple[Any, np.ndarray | None]],
        cpu_lock: threading.RLock,
        *,
        nprobe: int | None = None,
        device: int = 0,
    ) -> None:
        self._faiss = faiss
        self._source = source  # () -> (inner CPU index to clone, its position -> id map or None)
        self._cpu_lock = cpu_lock
        self.nprobe = nprobe  # set on IVF copies (FAISS-GPU's own parameter space)
        self._device = device
        self._lock = threading.Lock()
        self._copy: _Copy | None = None
        self._generation = 0
        self._running = False
        self._idle = threading.Event()
        self._idle.set()
        self.clones = 0  # full copies made (tests and logs)
        self.error: str | None = None

    # ---- building ------------------------------------------------------------------------------
    def _clone(self) -> _Copy:
        faiss = self._faiss
        res = faiss.StandardGpuResources()
        inner, ids = self._source()
        index = faiss.index_cpu_to_gpu(res, self._device, inner)
        if self.nprobe is not None:
            faiss.GpuParameterSpace().set_index_parameter(index, "nprobe", self.nprobe)
        self.clones += 1
        return _Copy(res, index, None if ids is None else np.asarray(ids, np.int64).copy())

    def schedule(self, *, drop: bool) -> None:
        """Make a fresh copy in the background; ``drop`` discards the current one at once (its content is stale)."""
        with self._lock:
            self._generation += 1
            if drop:
                self._copy = None
            if self._running:
                return  # the running build sees the new generation and goes again
            self._running = True
            self._idle.clear()
        threading.Thread(target=self._background, name="facematch-gpu-mirror", daemon=True).start()

    def _background(self) -> None:
        while True:
            with self._lock:
                generation = self._generation
            error = None
            try:
                # the CPU index's owner changes it (and tells this mirror) only under cpu_lock, so the
                # copy and its swap see one state, and no change falls between the two
                with self._cpu_lock:
                    copy = self._clone()
                    with self._lock:
                        if generation == self._generation:
                            self._copy, self.error = copy, None
                            self._running = False
                            self._idle.set()
                            return
            except Exception as exc:  # the CPU index keeps serving
                error = f"{type(exc).__name__}: {exc}"
            with self._lock:
                if generation != self._generation:
                    continue  # changed during the copy: copy again
                self.error = error
                self._running = False
                self._idle.set()
            logger.warning("could not copy the index to the GPU (%s); searching on CPU", error)
            return

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for a background copy to finish; True when the mirror is live."""
        self._idle.wait(timeout)
        with self._lock:
            return self._copy is not None

    # ---- following the CPU index --------------------------------------------------------------
    def added(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        with self._lock:
            copy = self._copy
            if copy is None:
                return
            revived = copy.tombstones.intersection(ids.tolist())
        if revived:  # a removed id comes back: its old vector is still in the copy
            self.schedule(drop=True)
            return
        with self._lock:
            if copy is not self._copy:
                return
            if copy.ids is None:
                copy.index.add_with_ids(vectors, ids)
            else:
                copy.index.add(vectors)
                copy.ids = np.concatenate([copy.ids, ids])
            copy.count += int(ids.size)

    def removed(self, ids: np.ndarray) -> None:
        with self._lock:
            copy = self._copy
            if copy is None:
                return
            copy.tombstones.update(int(i) for i in ids.tolist())
            crowded = len(copy.tombstones) > max(TOMBSTONE_FRACTION * copy.count, 64)
        if crowded:
            self.schedule(drop=False)

    # ---- searching -----------------------------------------------------------------------------
    @property
    def live(self) -> bool:
        return self._copy is not None

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray] | None:
        """Top-``k`` (scores, template ids) from the GPU, or ``None`` when the CPU must answer."""
        with self._lock:
            copy = self._copy
            if copy is None:
                return None
            dead = np.fromiter(copy.tombstones, np.int64) if copy.tombstones else None
            fetch = min(k + (dead.size if dead is not None else 0), copy.count)
            if fetch > GPU_MAX_K or fetch <= 0:
                return None
            scores, pos = copy.index.search(q, fetch)
            if copy.ids is None:
                ids = pos.astype(np.int64)
            else:
                ids = np.where(pos >= 0, copy.ids[np.clip(pos, 0, max(copy.ids.size - 1, 0))], -1).astype(np.int64)
        if dead is not None:
            scores, ids = _drop(scores, ids, dead, k)
        return scores[:, :k], ids[:, :k]

    def close(self) -> None:
        with self._lock:
            self._generation += 1
            self._copy = None


def _drop(scores: np.ndarray, ids: np.ndarray, dead: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    mask = np.isin(ids, dead)
    out_s = np.full((ids.shape[0], k), -np.inf, np.float32)
    out_i = np.full((ids.shape[0], k), -1, np.int64)
    for r in range(ids.shape[0]):
        keep = np.flatnonzero(~mask[r])[:k]
        out_s[r, : keep.size] = scores[r, keep]
        out_i[r, : keep.size] = ids[r, keep]
    return out_s, out_i


__all__ = ["GPU_MAX_K", "TOMBSTONE_FRACTION", "GpuMirror"]
