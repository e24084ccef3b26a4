"""Async micro-batching of embedding calls, the admission gate in front of inference, the decode budget.

Concurrent requests each submit their aligned face crops; one worker task gathers
what is waiting (up to ``max_batch`` crops, waiting at most ``max_wait_s`` for more
once the first crop arrives) and runs *one* embedding call for all of them in a
thread pool, so the event loop never blocks. While a call runs, new crops queue up
and form the next batch, so under load batches fill without any added wait.

The queue is bounded: :class:`Admission` caps the requests inside the inference
pipeline and :class:`MicroBatcher` the crops waiting; both raise ``OverloadedError``
(HTTP 429 with ``Retry-After``) instead of growing without limit. :class:`DecodeBudget`
caps the memory of the image decodes in flight server-wide: each decode reserves its
estimated cost (``facematch.io.DecodePlan.cost_bytes``) first and waits its turn when the
budget is spent, so concurrent decompression bombs queue instead of adding up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from facematch.errors import ImageTooLargeError

from .errors import NotReadyError, OverloadedError
from .metrics import Metrics

logger = logging.getLogger(__name__)

EmbedFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]  # crops -> (embeddings, norms)
Embedded = tuple[np.ndarray, np.ndarray]


@dataclass
class _Item:
    crops: np.ndarray
    future: asyncio.Future[Embedded]


class MicroBatcher:
    """Batches ``embed_fn`` calls across concurrent callers of :meth:`embed`."""

    def __init__(
        self,
        embed_fn: EmbedFn,
        executor: Executor,
        *,
        max_batch: int = 32,
        max_wait_s: float = 0.002,
        max_pending: int = 1024,
        metrics: Metrics | None = None,
    ) -> None:
        if max_batch < 1 or max_pending < 1 or max_wait_s < 0:
            raise ValueError("max_batch and max_pending must be >= 1, max_wait_s >= 0")
        self._fn = embed_fn
        self._executor = executor
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_pending = max_pending
        self._metrics = metrics
        self._pending: deque[_Item] = deque()
        self._n_pending = 0
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.batches = 0  # embedding calls made (for tests and logs)
        self.crops = 0

    @property
    def pending(self) -> int:
        """Crops waiting for an embedding call."""
        return self._n_pending

    async def embed(self, crops: np.ndarray) -> Embedded:
        """(embeddings, pre-normalisation norms) of ``crops`` (N, H, W, 3) BGR uint8, computed in a shared batch."""
        if self._closed:
            raise NotReadyError("the server is shutting down")
        n = int(len(crops))
        if n == 0:
            raise ValueError("no crops to embed")
        if self._n_pending + n > self.max_pending:
            if self._metrics is not None:
                self._metrics.rejected.inc()
            raise OverloadedError("the embedding queue is full; retry later", queued=self._n_pending)
        loop = asyncio.get_running_loop()
        if self._wakeup is None:
            self._wakeup = asyncio.Event()
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._run(), name="facematch-batcher")
        item = _Item(crops, loop.create_future())
        self._pending.append(item)
        self._set_pending(self._n_pending + n)
        self._wakeup.set()
        return await item.future

    def _set_pending(self, n: int) -> None:
        self._n_pending = n
        if self._metrics is not None:
            self._metrics.batch_queue.set(n)

    async def _gather(self) -> None:
        """Wait (at most ``max_wait_s``) for the batch to fill once something is pending."""
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait_s
        while self._n_pending < self.max_batch:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except asyncio.TimeoutError:
                return

    def _take(self) -> list[_Item]:
        batch: list[_Item] = []
        size = 0
        while self._pending:
            item = self._pending[0]
            if batch and size + len(item.crops) > self.max_batch:
                break
            self._pending.popleft()
            self._set_pending(self._n_pending - len(item.crops))
            if item.future.done():  # the caller went away
                continue
            batch.append(item)
            size += len(item.crops)
        return batch

    async def _run(self) -> None:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        while not self._closed:
            if not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if self.max_wait_s > 0 and self._n_pending < self.max_batch:
                await self._gather()
            batch = self._take()
            if not batch:
                continue
            stacked = batch[0].crops if len(batch) == 1 else np.concatenate([b.crops for b in batch])
            start = time.perf_counter()
            try:
                out = await loop.run_in_executor(self._executor, self._fn, stacked)
            except Exception as exc:  # the callers see the error; the worker lives on
                for b in batch:
                    if not b.future.done():
                        b.future.set_exception(exc)
                continue
            self.batches += 1
            self.crops += len(stacked)
            if self._metrics is not None:
                self._metrics.batch_size.observe(len(stacked))
                self._metrics.batch_seconds.observe(time.perf_counter() - start)
            emb, norms = out
            offset = 0
            for b in batch:
                n = len(b.crops)
                if not b.future.done():
                    b.future.set_result((emb[offset : offset + n], norms[offset : offset + n]))
                offset += n

    async def close(self) -> None:
        """Stop the worker and fail whatever is still waiting."""
        self._closed = True
        while self._pending:
            item = self._pending.popleft()
            if not item.future.done():
                item.future.set_exception(NotReadyError("the server is shutting down"))
        self._set_pending(0)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task


class Admission:
    """Caps the requests inside the inference pipeline; the next one gets 429 at once."""

    def __init__(self, limit: int, metrics: Metrics | None = None) -> None:
        self.limit = limit
        self.active = 0
        self._metrics = metrics

    def enter(self) -> None:
        if self.active >= self.limit:
            if self._metrics is not None:
                self._metrics.rejected.inc()
            raise OverloadedError(f"the server is busy ({self.active} requests in progress); retry later")
        self.active += 1
        if self._metrics is not None:
            self._metrics.queue_depth.set(self.active)

    def leave(self) -> None:
        self.active = max(0, self.active - 1)
        if self._metrics is not None:
            self._metrics.queue_depth.set(self.active)

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one slot for the block (429 ``overloaded`` at once when none is free)."""
        self.enter()
        try:
            yield
        finally:
            self.leave()


class Reservation:
    """Bytes held in a :class:`DecodeBudget` until :meth:`release` (or the end of ``async with``)."""

    def __init__(self, budget: DecodeBudget, nbytes: int) -> None:
        self._budget = budget
        self.nbytes = nbytes

    def release(self) -> None:
        freed, self.nbytes = self.nbytes, 0
        self._budget._give_back(freed)

    async def __aenter__(self) -> Reservation:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release()


class DecodeBudget:
    """A weighted, first-come-first-served semaphore of bytes for image decodes.

    :meth:`reserve` waits until ``nbytes`` fit in ``capacity`` (earlier waiters first, so a
    large decode is not starved by small ones) and refuses at once, with 413
    ``image_too_large``, a request for more than the whole capacity.
    """

    def __init__(self, capacity: int, metrics: Metrics | None = None) -> None:
        if capacity < 1:
            raise ValueError("the decode budget must be at least 1 byte")
        self.capacity = int(capacity)
        self.used = 0
        self._metrics = metrics
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    @property
    def waiting(self) -> int:
        return sum(1 for _, f in self._waiters if not f.done())

    async def reserve(self, nbytes: int) -> Reservation:
        n = max(0, int(nbytes))
        if n > self.capacity:
            raise ImageTooLargeError(
                f"decoding this image needs about {n} bytes, above the server's decode budget of {self.capacity}",
                cost_bytes=n,
                max_decode_bytes=self.capacity,
            )
        if not self._waiters and self.used + n <= self.capacity:
            self._take(n)
            return Reservation(self, n)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((n, future))
        self._wake()  # earlier waiters may have gone (cancelled): this one may fit now
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():  # granted, then cancelled: give it back
                self._give_back(n)
            else:
                self._wake()
            raise
        return Reservation(self, n)

    def _take(self, n: int) -> None:
        self.used += n
        if self._metrics is not None:
            self._metrics.decode_bytes.set(self.used)

    def _give_back(self, n: int) -> None:
        if n <= 0:
            return
        self.used = max(0, self.used - n)
        if self._metrics is not None:
            self._metrics.decode_bytes.set(self.used)
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            n, future = self._waiters[0]
            if future.done():  # cancelled while waiting
                self._waiters.popleft()
                continue
            if self.used + n > self.capacity:
                return
            self._waiters.popleft()
            self._take(n)
            future.set_result(None)


__all__ = ["Admission", "DecodeBudget", "MicroBatcher", "Reservation"]
