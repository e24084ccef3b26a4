"""What one app instance holds: settings, metrics, keys, thread pools, models, gallery, readiness."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from facematch.errors import FacematchError
from facematch.runtime import THREADS_ENV

from .batcher import Admission, DecodeBudget, MicroBatcher
from .metrics import Metrics
from .security import KeyRing
from .settings import Settings

if TYPE_CHECKING:
    from facematch.gallery import Gallery
    from facematch.matcher import FaceMatcher

logger = logging.getLogger(__name__)

Status = Literal["loading", "ready", "failed"]


def gallery_options(s: Settings) -> dict[str, Any]:
    """The ``Gallery.open`` keyword arguments the settings give (the PostgreSQL ones only for a URI)."""
    from facematch.gallery.postgres_store import is_postgres_uri

    options: dict[str, Any] = {"read_only": s.gallery_read_only, "default_fpir": s.default_fpir}
    if s.gallery_backend is not None:
        options["backend"] = s.gallery_backend
    if s.milvus_uri is not None:
        options["milvus_uri"] = s.milvus_uri
    if is_postgres_uri(s.gallery):
        options.update(poll_s=s.gallery_poll_s, listen=s.gallery_listen, pool_size=s.gallery_pool_size)
    return options


class ServerState:
    """Per-app state. Models and the gallery are loaded by :meth:`load` (off the event loop)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.keys = KeyRing(settings.api_keys)
        self.executor = ThreadPoolExecutor(settings.inference_threads, thread_name_prefix="facematch-infer")
        self._embed_executor = ThreadPoolExecutor(1, thread_name_prefix="facematch-embed")
        self.admission = Admission(settings.queue_size, self.metrics)
        self.decode_budget = DecodeBudget(settings.max_decode_bytes, self.metrics)
        self.matcher: FaceMatcher | None = None
        self.gallery: Gallery | None = None
        self.status: Status = "loading"
        self.error: str | None = None
        self._batchers: dict[int, tuple[Any, MicroBatcher]] = {}
        self._refresh_lock = threading.Lock()
        self._last_refresh = 0.0
        self.metrics.watch_gallery(
            lambda: float(len(self.gallery)) if self.gallery is not None else 0.0,
            lambda: float(self.gallery.num_templates) if self.gallery is not None else 0.0,
        )

    @property
    def ready(self) -> bool:
        return self.status == "ready"

    # ---- loading ---------------------------------------------------------------------------
    def load(self) -> None:
        """Load the matcher and the gallery, warm the models up, then mark the app ready."""
        s = self.settings
        try:
            from facematch.matcher import FaceMatcher

            start = time.perf_counter()
            # The server owns the threads: requests run side by side on `inference_threads` worker
            # threads, each detector call on its share of the cores; embedding batches come from one
            # batcher thread, one batch at a time, and the matcher splits each batch over every core
            # (workers=cpus, one single-threaded session call per part: with the whole batch on one
            # thread, a /verify's two crops took 1.6x as long). Idle ONNX Runtime threads do not spin.
            cpus = os.cpu_count() or 1
            threads = None if os.environ.get(THREADS_ENV) else max(1, cpus // s.inference_threads)
            matcher = FaceMatcher(
                detector=s.detector,
                embedder=s.embedder,
                max_pixels=s.max_pixels,
                max_batch=s.batch_max_size,
                threads=threads,
                spin_wait=False,
                workers=cpus,
            )
            w, h = matcher.embedder.size
            matcher.embed_crops(np.zeros((1, h, w, 3), np.uint8))  # first run allocates; do it now
            if getattr(matcher.embedder, "device", None) == "cuda":  # torch-cuda: capture every batch bucket now
                matcher.embedder.warmup()  # type: ignore[union-attr]
            self.matcher = matcher
            if s.gallery is not None:
                from facematch.gallery import Gallery

                self.gallery = Gallery.open(s.gallery, matcher=matcher, **gallery_options(s))
                self._last_refresh = time.monotonic()
            self.status = "ready"
            self.metrics.ready.set(1)
            g = self.gallery
            logger.info(
                "ready in %.1f s: model %s%s",
                time.perf_counter() - start,
                matcher.model_id,
                f", gallery {g.location} ({len(g)} identities)" if g is not None else "",  # no password in it
            )
            self._log_devices(matcher)
        except FacematchError as exc:
            self._fail(f"{exc.code}: {exc.message}")
        except Exception as exc:
            logger.exception("loading failed")
            self._fail(f"{type(exc).__name__}: {exc}")

    def _log_devices(self, matcher: FaceMatcher) -> None:
        """Where inference and search really run (what ONNX Runtime loaded, not what was installed)."""
        providers = matcher.providers
        index = self.gallery.info().index if self.gallery is not None else "no gallery"
        logger.info(
            "providers: detector %s, embedder %s; index %s", providers["detector"], providers["embedder"], index
        )
        if any(p[0] == "CPUExecutionProvider" for p in providers.values() if p) and _gpu_runtime_installed():
            logger.warning("onnxruntime-gpu is installed but a model runs on CPU: %s (see docs/gpu.md)", providers)

    def _fail(self, message: str) -> None:
        self.status = "failed"
        self.error = message
        self.metrics.ready.set(0)
        logger.error("the server could not load its models or gallery: %s", message)

    # ---- per-matcher batchers ---------------------------------------------------------------
    def batcher_for(self, matcher: FaceMatcher) -> MicroBatcher:
        """The micro-batcher of ``matcher`` (one per matcher object, so overridden deps get their own)."""
        key = id(matcher)
        entry = self._batchers.get(key)
        if entry is None or entry[0] is not matcher:
            s = self.settings
            batcher = MicroBatcher(
                matcher.embed_crops,
                self._embed_executor,
                max_batch=s.batch_max_size,
                max_wait_s=s.batch_max_wait_ms / 1000.0,
                max_pending=max(s.batch_max_size, s.max_faces_per_image, s.queue_size * 4),
                metrics=self.metrics,
            )
            self._batchers[key] = (matcher, batcher)
            return batcher
        return entry[1]

    # ---- gallery freshness ------------------------------------------------------------------
    def maybe_refresh(self, gallery: Gallery) -> None:
        """Read-only galleries pick up other writers' commits at most every ``gallery_refresh_s``."""
        if not gallery.read_only:
            return
        now = time.monotonic()
        if now - self._last_refresh < self.settings.gallery_refresh_s:
            return
        with self._refresh_lock:
            if now - self._last_refresh >= self.settings.gallery_refresh_s:
                gallery.refresh()
                self._last_refresh = time.monotonic()

    # ---- shutdown ---------------------------------------------------------------------------
    async def close(self) -> None:
        for _, batcher in list(self._batchers.values()):
            await batcher.close()
        self._batchers.clear()
        loop = asyncio.get_running_loop()
        if self.gallery is not None:
            gallery, self.gallery = self.gallery, None
            await loop.run_in_executor(None, gallery.close)
        self.executor.shutdown(wait=False, cancel_futures=True)
        self._embed_executor.shutdown(wait=False, cancel_futures=True)


def _gpu_runtime_installed() -> bool:
    try:
        import onnxruntime as ort
    except ImportError:  # pragma: no cover - the server extra's runtime
        return False
    return "CUDAExecutionProvider" in ort.get_available_providers()


__all__ = ["ServerState", "Status"]
