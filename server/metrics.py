"""Prometheus metrics on a per-app registry (several apps can live in one process, e.g. in tests).

The registry holds the app's own metrics plus the standard process (``process_*``: CPU, memory,
open files), platform (``python_info``) and garbage-collector (``python_gc_*``) collectors.
``_created`` series are not exposed. Request latency is labelled by status *class* (``2xx``,
``4xx``, ``5xx``), the request counter by exact status code, both by the route's path template
(``/gallery/identities/{identity_id}``, ``/openapi.json``, ``/docs``, ``/docs/assets``), so label
cardinality stays bounded; requests no route matches are ``route="unmatched"``.

prometheus-fastapi-instrumentator was considered: it supports a custom registry, but labels by
handler only once a route matched (the Swagger assets mount and CORS preflights would stay
unnamed), brings its own metric names, and the middleware below is the few lines we need.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """Request counts/latency by route and status, batch sizes, queue depth and gallery size."""

    def __init__(self) -> None:
        from prometheus_client import (
            CollectorRegistry,
            Counter,
            Gauge,
            GCCollector,
            Histogram,
            PlatformCollector,
            ProcessCollector,
        )

        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        self.requests = Counter(
            "facematch_http_requests",
            "HTTP requests by route template and status",
            ["method", "route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "facematch_http_request_duration_seconds",
            "HTTP request latency by route template and status class (2xx, 4xx, 5xx)",
            ["method", "route", "status_class"],
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
        """The exposition text (without ``_created`` series) and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(_WithoutCreated(self.registry)), CONTENT_TYPE_LATEST  # type: ignore[arg-type]

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one finished request and record its latency."""
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route, status_class(status)).observe(seconds)


class _WithoutCreated:
    """A registry view that drops the ``*_created`` samples (one gauge per label set, noise in most setups)."""

    def __init__(self, registry: Any) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        metrics: Iterable[Metric] = self._registry.collect()
        for metric in metrics:
            metric.samples = [s for s in metric.samples if not s.name.endswith("_created")]
            yield metric


def status_class(status: int) -> str:
    """``2xx``, ``4xx``, ``5xx``, ... (bounded: at most five values)."""
    return f"{status // 100}xx" if 100 <= status <= 599 else "other"


def route_label(scope: Scope, original: Scope | None = None) -> str:
    """The route's path template (bounded cardinality), or ``unmatched``.

    API routes leave themselves in ``scope["route"]``; the plain routes and mounts of the app
    (``/openapi.json``, ``/docs``, the ``/docs/assets`` mount) are named by matching ``original``,
    the request's scope as it came in, against them; CORS preflights (answered by the CORS
    middleware before any routing) are ``cors_preflight``.
    """
    route: Any = scope.get("route")
    path = getattr(route, "path_format", None) or getattr(route, "path", None)
    if path:
        return str(path)
    if original is None:
        return "unmatched"
    if original.get("method") == "OPTIONS" and any(
        name == b"access-control-request-method" for name, _ in original.get("headers", ())
    ):
        return "cors_preflight"
    from starlette.routing import Match, Mount, Route

    for candidate in getattr(scope.get("app"), "routes", ()):
        if isinstance(candidate, (Route, Mount)) and candidate.matches(original)[0] != Match.NONE:
            return str(candidate.path)
    return "unmatched"


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
        original = dict(scope)  # routing rewrites the scope (a mount's root_path); match on the request's own

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = route_label(scope, original)
            self.metrics.observe(scope.get("method", ""), route, status, time.perf_counter() - start)


__all__ = ["Metrics", "MetricsMiddleware", "route_label", "status_class"]
