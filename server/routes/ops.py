"""Operations: liveness, readiness, Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from ..deps import StateDep
from ..schemas import GallerySummary, HealthResponse, ReadyResponse
from ..schemas.ops import ModelProviders
from ..security import presented_key
from . import problems

router = APIRouter(tags=["operations"])


@router.get(
    "/healthz",
    summary="Liveness",
    operation_id="health",
    response_model=HealthResponse,
    responses={503: {"model": HealthResponse}},
)
async def healthz(state: StateDep) -> Response:
    """200 while the process serves requests; 503 once loading the models or gallery has failed."""
    failed = state.status == "failed"
    body = HealthResponse(status="failed" if failed else "ok")
    return JSONResponse(body.model_dump(), status_code=503 if failed else 200)


@router.get(
    "/readyz",
    summary="Readiness: models and gallery loaded",
    operation_id="readiness",
    response_model=ReadyResponse,
    responses={503: {"model": ReadyResponse, "description": "still loading, or loading failed"}},
)
async def readyz(state: StateDep) -> Response:
    """200 when the models (and the gallery, if configured) are loaded; 503 until then."""
    gallery = None
    index = None
    if state.ready and state.gallery is not None:
        g = state.gallery
        gallery = GallerySummary(identities=len(g), templates=g.num_templates, read_only=g.read_only)
        index = g.info().index
    providers = ModelProviders(**state.matcher.providers) if state.matcher is not None else None
    body = ReadyResponse(
        ready=state.ready,
        status=state.status,
        model_id=state.matcher.model_id if state.matcher is not None else None,
        gallery=gallery,
        providers=providers,
        index=index,
        detail=state.error,
    )
    return JSONResponse(body.model_dump(), status_code=200 if state.ready else 503)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    operation_id="metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}, **problems(401, 403)},
)
async def metrics(request: Request, state: StateDep) -> Response:
    """Request counts (by route and status) and latency (by route and status class), inference batch
    sizes, queue depth, gallery size, and the process (CPU, memory, open files), Python platform and
    garbage-collector metrics. Open unless `FACEMATCH_METRICS_REQUIRE_AUTH=true` (then it needs the
    `admin` scope)."""
    if state.settings.metrics_require_auth:
        key = presented_key(request.headers.get("authorization"), request.headers.get("x-api-key"))
        state.keys.authorize(state.keys.authenticate(key), "admin")
    data, content_type = state.metrics.render()
    return Response(data, media_type=content_type)


__all__ = ["router"]
