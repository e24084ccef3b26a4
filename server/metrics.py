"""Prometheus metrics on a per-app registry (several apps can live in one process, e.g. in tests)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """Request counts/latency by route and status, batch sizes, queue depth and gallery size."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "facematch_http_requests",
            "HTTP requests by route template and status",
            ["method", "route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "facematch_http_request_duration_seconds",
            "HTTP request latency by route template and status",
            ["method", "route", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "facematch_inference_batch_size", "Face crops per embedding call", buckets=BATCH_BUCKETS, registry=r
        )
        self.batch_seconds = Histogram(
            "facematch_inference_batch_duration_seconds",
            "Time per embedding call",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge("facematch_queue_depth", "Requests admitted to inference and not done", registry=r)
        self.batch_queue = Gauge("facematch_batch_queue_crops", "Face crops waiting for an embedding call", registry=r)
        self.decode_bytes = Gauge(
            "facematch_decode_bytes_reserved", "Bytes of the decode budget held by images in flight", registry=r
        )
        self.rejected = Counter("facematch_rejected", "Requests refused because the queue was full", registry=r)
        self.ready = Gauge("facematch_ready", "1 when models and gallery are loaded", registry=r)
        self.gallery_identities = Gauge("facematch_gallery_identities", "Identities in the gallery", registry=r)
        self.gallery_templates = Gauge("facematch_gallery_templates", "Face templates in the gallery", registry=r)

    def watch_gallery(self, identities: Callable[[], float], templates: Callable[[], float]) -> None:
        self.gallery_identities.set_function(identities)
        self.gallery_templates.set_function(templates)

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def route_label(scope: Scope) -> str:
    """The matched route's path template (bounded cardinality), or ``unmatched``."""
    route: Any = scope.get("route")
    path = getattr(route, "path_format", None) or getattr(route, "path", None)
    return str(path) if path else "unmatched"


class MetricsMiddleware:
    """Pure ASGI middleware recording every HTTP request (streaming-safe, no body buffering)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            labels = (scope.get("method", ""), route_label(scope), str(status))
            self.metrics.requests.labels(*labels).inc()
            self.metrics.latency.labels(*labels).observe(time.perf_counter() - start)


__all__ = ["Metrics", "MetricsMiddleware", "route_label"]
