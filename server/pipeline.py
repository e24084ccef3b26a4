"""Where the request-side steps run: decode → prepare in the worker threads, embed through the batcher.

Every step is the SDK's own (the decode of ``facematch.io``, ``detect``, ``prepare``,
``embed_crops``, ``compare``); the server only decides *where* each runs, so the event loop
never waits on a model and concurrent requests share embedding batches. Each image's decode
first reserves its estimated peak memory in the server's
:class:`~facematch.server.batcher.DecodeBudget` (``FACEMATCH_MAX_DECODE_BYTES``) and holds it
until its faces are prepared (decode and prepare are one pool call).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Sequence
from typing import Literal, TypeVar

import numpy as np

from facematch.errors import FacematchError
from facematch.io import DecodedImage, DecodePlan, probe_image
from facematch.matcher import FaceMatcher, FaceSelection
from facematch.types import Detections, PreparedImage

from .batcher import MicroBatcher
from .schemas import Timings
from .state import ServerState

T = TypeVar("T")
FaceMode = Literal["largest", "all"]


def detect_faces(matcher: FaceMatcher, decoded: DecodedImage) -> tuple[tuple[int, int], Detections]:
    """(original image size, every face largest first) of a decoded image, by the matcher's detector."""
    return decoded.original_size, matcher.detect(decoded).sorted_by_area()


def _decode_then(plan: DecodePlan, step: Callable[[DecodedImage], T]) -> T:
    return step(plan.decode())


async def run_in_pool(state: ServerState, fn: Callable[..., T], *args: object) -> T:
    """Run a blocking call (model, SQLite, FAISS) in the app's worker threads."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(state.executor, functools.partial(fn, *args))


class Pipeline:
    """One request's view of the matcher, its batcher and the worker threads (with timings)."""

    def __init__(self, state: ServerState, matcher: FaceMatcher) -> None:
        self.state = state
        self.matcher = matcher
        self.batcher: MicroBatcher = state.batcher_for(matcher)
        self.max_faces = state.settings.max_faces_per_image
        self.started = time.perf_counter()
        self.prepare_s = 0.0
        self.embed_s = 0.0
        self.search_s = 0.0

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        """Run a blocking call in the inference thread pool."""
        return await run_in_pool(self.state, fn, *args)

    def _prepare(self, decoded: DecodedImage, faces: FaceSelection) -> PreparedImage:
        return self.matcher.prepare(decoded, faces, max_faces=self.max_faces if faces == "all" else None)

    async def _decoded(self, data: bytes, step: Callable[[DecodedImage], T]) -> T:
        """Decode ``data`` and run ``step`` on it, in one pool call, holding its cost in the decode budget.

        The header is probed first (no pixels); the reservation covers the decode's peak and
        lasts until ``step`` is done, so decoded images never pile up outside the budget.
        """
        m, budget = self.matcher, self.state.decode_budget
        plan = await self.run(
            functools.partial(
                probe_image,
                data,
                max_pixels=m.max_pixels,
                max_side=m.decode_max_side,
                max_decode_bytes=budget.capacity,
            )
        )
        async with await budget.reserve(plan.cost_bytes):
            return await self.run(_decode_then, plan, step)

    async def prepare(self, data: bytes, faces: FaceSelection = "largest") -> PreparedImage:
        """``matcher.prepare`` of one image (``faces="all"``: at most ``max_faces_per_image``)."""
        return (await self.prepare_many([data], [""], faces))[0]

    async def prepare_many(
        self,
        blobs: Sequence[bytes],
        labels: Sequence[str],
        faces: FaceSelection = "largest",
        *,
        step: Callable[[DecodedImage], PreparedImage] | None = None,
    ) -> list[PreparedImage]:
        """Prepare several images concurrently; the first failure (in order) is raised naming its image."""
        results = await self.prepare_each(blobs, faces, step=step)
        for label, r in zip(labels, results, strict=True):
            if isinstance(r, FacematchError):
                raise (r.about(label) if label else r) from r
        return [r for r in results if isinstance(r, PreparedImage)]

    async def prepare_each(
        self,
        blobs: Sequence[bytes],
        faces: FaceSelection = "largest",
        *,
        step: Callable[[DecodedImage], PreparedImage] | None = None,
    ) -> list[PreparedImage | FacematchError]:
        """Decode and prepare several images concurrently, keeping each image's ``FacematchError`` in its place.

        ``step`` replaces the default preparation of a decoded image (``matcher.prepare`` with
        ``faces``), e.g. the gallery's ``prepare_for_enrolment``. Any other exception propagates.
        """
        fn = step or functools.partial(self._prepare, faces=faces)
        t = time.perf_counter()
        try:
            results = await asyncio.gather(*(self._decoded(b, fn) for b in blobs), return_exceptions=True)
        finally:
            self.prepare_s += time.perf_counter() - t
        for r in results:
            if isinstance(r, BaseException) and not isinstance(r, FacematchError):
                raise r
        return [r for r in results if isinstance(r, (PreparedImage, FacematchError))]

    async def detect(self, data: bytes) -> tuple[tuple[int, int], Detections]:
        t = time.perf_counter()
        try:
            return await self._decoded(data, functools.partial(detect_faces, self.matcher))
        finally:
            self.prepare_s += time.perf_counter() - t

    async def embed(self, crops: np.ndarray) -> np.ndarray:
        """Unit-norm embeddings of aligned crops, computed in a batch shared with other requests."""
        return (await self.embed_with_norms(crops))[0]

    async def embed_with_norms(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        t = time.perf_counter()
        try:
            return await self.batcher.embed(crops)
        finally:
            self.embed_s += time.perf_counter() - t

    async def search(self, fn: Callable[..., T], *args: object) -> T:
        t = time.perf_counter()
        try:
            return await self.run(fn, *args)
        finally:
            self.search_s += time.perf_counter() - t

    def timings(self) -> Timings:
        def ms(v: float) -> float | None:
            return round(v * 1000.0, 3) if v > 0 else None

        return Timings(
            total_ms=round((time.perf_counter() - self.started) * 1000.0, 3),
            prepare_ms=ms(self.prepare_s),
            embed_ms=ms(self.embed_s),
            search_ms=ms(self.search_s),
        )


__all__ = ["FaceMode", "Pipeline", "detect_faces", "run_in_pool"]
