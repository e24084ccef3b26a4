"""The request-side pipeline: decode → detect → align in a thread pool, embed through the batcher.

Each step is the SDK's own (``FaceMatcher.load``, ``largest_face``, ``detect``, ``align``);
the server only decides where they run, so the event loop never waits on a model.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, TypeVar

import numpy as np

from facematch.errors import FacematchError, NoFaceError
from facematch.matcher import FaceMatcher
from facematch.types import Face

from .batcher import MicroBatcher
from .schemas import Timings
from .state import ServerState

T = TypeVar("T")
FaceMode = Literal["largest", "all"]


@dataclass(frozen=True)
class PreparedImage:
    """Faces of one image (largest first), their aligned crops, and how many faces there were."""

    faces: list[Face]
    crops: np.ndarray  # (N, 112, 112, 3) BGR uint8
    faces_total: int
    width: int
    height: int

    @property
    def truncated(self) -> bool:
        return self.faces_total > len(self.faces)


def prepare_image(matcher: FaceMatcher, data: bytes, mode: FaceMode, max_faces: int) -> PreparedImage:
    """Decode, find the face(s) and align them (blocking; run it in a worker thread)."""
    decoded = matcher.load(data)
    width, height = decoded.original_size
    if mode == "largest":
        face = matcher.largest_face(decoded)
        return PreparedImage([face], matcher.align(decoded, [face]), 1, width, height)
    dets = matcher.detect(decoded)
    if len(dets) == 0:
        raise NoFaceError("no face found in the image")
    faces = list(dets.sorted_by_area())
    chosen = faces[:max_faces]
    return PreparedImage(chosen, matcher.align(decoded, chosen), len(faces), width, height)


def detect_image(matcher: FaceMatcher, data: bytes, max_faces: int) -> PreparedImage:
    """All faces of an image (largest first, at most ``max_faces``), without crops."""
    decoded = matcher.load(data)
    width, height = decoded.original_size
    faces = list(matcher.detect(decoded).sorted_by_area())
    empty = np.zeros((0, 112, 112, 3), np.uint8)
    return PreparedImage(faces[:max_faces], empty, len(faces), width, height)


async def run_in_pool(state: ServerState, fn: Callable[..., T], *args: object) -> T:
    """Run a blocking call (model, SQLite, FAISS) in the app's worker threads."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(state.executor, functools.partial(fn, *args))


def _labelled(exc: FacematchError, label: str) -> FacematchError:
    """The same error with the image it is about named in its message."""
    try:
        return type(exc)(f"{label}: {exc.message}", **{**exc.details, "image": label})
    except TypeError:
        return exc


class Pipeline:
    """One request's view of the matcher, its batcher and the worker threads."""

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

    async def prepare(self, data: bytes, mode: FaceMode = "largest") -> PreparedImage:
        t = time.perf_counter()
        try:
            return await self.run(prepare_image, self.matcher, data, mode, self.max_faces)
        finally:
            self.prepare_s += time.perf_counter() - t

    async def prepare_many(
        self, blobs: list[bytes], labels: list[str], mode: FaceMode = "largest"
    ) -> list[PreparedImage]:
        """Prepare several images concurrently; an error names the image it is about (``labels``)."""
        t = time.perf_counter()
        try:
            results = await asyncio.gather(
                *(self.run(prepare_image, self.matcher, b, mode, self.max_faces) for b in blobs),
                return_exceptions=True,
            )
        finally:
            self.prepare_s += time.perf_counter() - t
        for label, r in zip(labels, results, strict=True):
            if isinstance(r, FacematchError):
                raise _labelled(r, label) from r
            if isinstance(r, BaseException):
                raise r
        return [r for r in results if isinstance(r, PreparedImage)]

    async def detect(self, data: bytes) -> PreparedImage:
        t = time.perf_counter()
        try:
            return await self.run(detect_image, self.matcher, data, self.max_faces)
        finally:
            self.prepare_s += time.perf_counter() - t

    async def embed(self, crops: np.ndarray) -> np.ndarray:
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


__all__ = ["FaceMode", "Pipeline", "PreparedImage", "detect_image", "prepare_image", "run_in_pool"]
