"""The FastAPI application factory.

    uvicorn --factory facematch.server.app:create_app      # settings from FACEMATCH_* / env file

Models and the gallery load in a background thread started by the lifespan handler:
``/healthz`` answers at once, ``/readyz`` answers 503 until they are loaded, and the
model-backed routes answer 503 ``not_ready`` (with Retry-After) until then.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from .access_log import install_access_log_filter
from .errors import install_error_handlers
from .metrics import MetricsMiddleware
from .settings import Settings
from .state import ServerState
from .uploads import BodyGuardMiddleware, BodyLimitMiddleware

if TYPE_CHECKING:
    from fastapi import FastAPI

logger = logging.getLogger(__name__)

API_DESCRIPTION = """\
Face matching on hyperspherical embeddings: verify two faces, identify a face against a
gallery (open-set, with calibrated thresholds), manage the gallery.

Send images as multipart file parts or as base64 strings in JSON. Authenticate with
`Authorization: Bearer <key>` or `X-API-Key: <key>`. Errors are `application/problem+json`
with a stable `code`. Every route is also served under `/v1` (same behaviour, not listed twice here).

Conventions: a face `box` is `[x1, y1, x2, y2]` (left, top, right, bottom) and `landmarks` are 5
`[x, y]` points (left eye, right eye, nose, left and right mouth corners), all in pixels of the
original, orientation-corrected image; `similarity` is the cosine similarity of two unit-norm
embeddings, in [-1, 1]; `is_match` is `similarity >= threshold`; timings are in milliseconds.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    """A new app. ``settings`` default to :meth:`Settings.load` (environment and env file).

    Without ``settings`` (``uvicorn --factory``), malformed settings or an exposed bind without
    keys end the process with a one-line message (``SystemExit``), not a traceback.
    """
    from fastapi import FastAPI

    from .routes import batch, explain, gallery, gallery_verify, match, ops

    if settings is None:
        try:
            settings = Settings.load()
            settings.check_exposure()
        except ValueError as exc:
            raise SystemExit(f"facematch: invalid settings: {exc}") from None
    else:
        settings.check_exposure()
    install_access_log_filter()
    if not settings.auth_enabled:
        logger.warning("no API keys configured: authentication is DISABLED (loopback %s only)", settings.host)
    state = ServerState(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        loader = loop.run_in_executor(state.executor, state.load)
        try:
            yield
        finally:
            if not loader.done():
                await asyncio.wait([loader], timeout=60)
            await state.close()

    app = FastAPI(
        title="facematch",
        version=_version(),
        description=API_DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # served below from local files: FastAPI's default page loads them from a CDN
        redoc_url=None,
        openapi_tags=[
            {"name": "matching", "description": "verify, explain, identify, detect, embed"},
            {"name": "gallery", "description": "enrolled identities (scope `enroll`)"},
            {"name": "operations", "description": "health, readiness, metrics"},
        ],
    )
    app.state.facematch = state
    install_error_handlers(app, settings.retry_after_s)
    app.include_router(ops.router)
    # One canonical copy of each route in the OpenAPI schema (the bare paths); the same routes
    # answer under /v1 too, hidden from the schema so generated clients see each operation once.
    for prefix, listed in (("", True), ("/v1", False)):
        for module in (match, explain, batch, gallery_verify, gallery):
            app.include_router(module.router, prefix=prefix, include_in_schema=listed)
    _install_docs(app)
    _install_openapi_limits(app, settings)
    app.add_middleware(
        BodyGuardMiddleware,
        max_bytes=settings.max_request_bytes,
        timeout_s=settings.body_timeout_s,
        min_rate=float(settings.min_upload_rate),
    )
    _install_cors(app, settings)  # outside the body limit (preflights have no body), inside the metrics
    app.add_middleware(MetricsMiddleware, metrics=state.metrics)
    return app


CORS_METHODS = ("GET", "POST", "PATCH", "DELETE")
CORS_HEADERS = ("Authorization", "X-API-Key", "Content-Type")
CORS_EXPOSED = ("Retry-After", "Deprecation", "Link")


def _install_cors(app: FastAPI, settings: Settings) -> None:
    """Starlette's CORS middleware for ``FACEMATCH_CORS_ORIGINS`` (off when the list is empty)."""
    if not settings.cors_origins:
        return
    from starlette.middleware.cors import CORSMiddleware

    app.add_middleware(
        CORSMiddleware,
        allow_origins=list(settings.cors_origins),
        allow_methods=list(CORS_METHODS),
        allow_headers=list(CORS_HEADERS),
        expose_headers=list(CORS_EXPOSED),
        allow_credentials=settings.cors_allow_credentials,
        max_age=settings.cors_max_age_s,
    )
    logger.info("CORS allowed for %s", ", ".join(settings.cors_origins))


DOCS_ASSETS = "/docs/assets"


def _install_openapi_limits(app: FastAPI, settings: Settings) -> None:
    """The schema states this server's limits: ``k`` of /identify at most ``max_k``."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            for path, item in schema.get("paths", {}).items():
                if not path.endswith("/identify"):
                    continue
                for media in item.get("post", {}).get("requestBody", {}).get("content", {}).values():
                    k = media.get("schema", {}).get("properties", {}).get("k")
                    if isinstance(k, dict):
                        k["maximum"] = settings.max_k
        return app.openapi_schema or build()

    app.openapi = openapi  # type: ignore[method-assign]


def _install_docs(app: FastAPI) -> None:
    """``GET /docs``: Swagger UI from the installed ``swagger-ui-bundle-v2`` files (works offline)."""
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.responses import HTMLResponse
    from fastapi.staticfiles import StaticFiles

    try:
        from swagger_ui_bundle import swagger_ui_path
    except ImportError:
        logger.warning("swagger-ui-bundle-v2 is not installed: /docs is off (/openapi.json still is served)")
        return
    app.mount(DOCS_ASSETS, StaticFiles(directory=str(swagger_ui_path)), name="docs-assets")

    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} API",
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS}/favicon-32x32.png",
        )

    app.add_api_route("/docs", docs, methods=["GET"], include_in_schema=False)


def _version() -> str:
    from facematch import __version__

    return __version__


__all__ = ["CORS_EXPOSED", "CORS_HEADERS", "CORS_METHODS", "BodyGuardMiddleware", "BodyLimitMiddleware", "create_app"]
