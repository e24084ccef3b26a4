"""FAISS's OpenMP threads, chosen per call.

FAISS parallelises a search with OpenMP, by default over every core. A one-probe search
is too small to split: on a server whose other threads (ONNX Runtime, the event loop,
other requests) keep the cores busy, the extra OpenMP thread waits for a core and spins
in the barrier, and the search gets several times slower than on one thread (measured
in ``benchmarks/bench_gallery_scale.py --threads``). So a search gets one thread below
``PARALLEL_MIN_BATCH`` probes, and every core for large batches.

``omp_set_num_threads`` sets the OpenMP ``nthreads-var`` of the *calling thread* (a
per-thread value in the OpenMP specification, and in the GNU and LLVM runtimes), so
each Python thread sets its own count before its FAISS call and concurrent callers do
not disturb one another. Whether that holds for the loaded runtime is checked once
(:func:`thread_local_setting`); where it does not, the set-and-call pairs are
serialised by a lock instead.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

logger = logging.getLogger(__name__)

PARALLEL_MIN_BATCH = 32  # probes per search from which FAISS gets every core

_probe_lock = threading.Lock()
_global_lock = threading.RLock()
_thread_local: bool | None = None


def cores() -> int:
    """Cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def thread_local_setting(faiss: Any) -> bool:
    """True when ``faiss.omp_set_num_threads`` in one thread leaves other threads' count alone."""
    global _thread_local
    if _thread_local is None:
        with _probe_lock:
            if _thread_local is None:
                seen: list[int] = []

                def probe() -> None:
                    before = int(faiss.omp_get_max_threads())
                    faiss.omp_set_num_threads(before + 1)
                    seen.append(before)

                mine = int(faiss.omp_get_max_threads())
                t = threading.Thread(target=probe, name="facematch-omp-probe")
                t.start()
                t.join()
                _thread_local = int(faiss.omp_get_max_threads()) == mine
                if not _thread_local:  # the probe changed everyone's count: put it back
                    faiss.omp_set_num_threads(mine)
                    logger.warning(
                        "this OpenMP runtime shares one thread count per process; FAISS calls are serialised"
                    )
    return _thread_local


def threads_for(n_queries: int, setting: int | None) -> int:
    """FAISS threads for a search of ``n_queries`` probes (``0``: leave FAISS's setting alone)."""
    if setting is not None:
        return setting
    return 1 if n_queries < PARALLEL_MIN_BATCH else cores()


@contextmanager
def faiss_threads(faiss: Any, n: int) -> Iterator[None]:
    """Run the body with ``n`` FAISS OpenMP threads in this thread (``n <= 0``: unchanged)."""
    if n <= 0:
        yield
        return
    if thread_local_setting(faiss):
        before = int(faiss.omp_get_max_threads())
        if before != n:
            faiss.omp_set_num_threads(n)
        try:
            yield
        finally:
            if before != n:
                faiss.omp_set_num_threads(before)
        return
    with _global_lock:
        before = int(faiss.omp_get_max_threads())
        faiss.omp_set_num_threads(n)
        try:
            yield
        finally:
            faiss.omp_set_num_threads(before)


__all__ = ["PARALLEL_MIN_BATCH", "cores", "faiss_threads", "thread_local_setting", "threads_for"]
