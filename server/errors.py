"""Errors as ``application/problem+json`` (RFC 9457) with a stable ``code``.

Every ``FacematchError`` maps to its own ``http_status`` and ``code``; request
validation errors are 422 ``invalid_request``; anything unexpected is a bare 500
``internal_error`` with no stack trace (the trace goes to the server log only).
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

import numpy as np

from facematch.errors import FacematchError

if TYPE_CHECKING:
    from fastapi import FastAPI, Request
    from starlette.responses import Response

logger = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
CLIENT_CLOSED_REQUEST = 499  # the status /metrics records when the client disconnects mid-request


class ServerError(FacematchError):
    """Base of the errors only the server raises (limits, auth, readiness)."""


class PayloadTooLargeError(ServerError):
    """A file or the whole request is above its byte limit."""

    code = "payload_too_large"
    http_status = 413


class RequestTimeoutError(ServerError):
    """The request body did not arrive in time (read timeout or below the minimum upload rate)."""

    code = "request_timeout"
    http_status = 408


class TooManyImagesError(ServerError):
    code = "too_many_images"
    http_status = 413


class TooManyPairsError(ServerError):
    code = "too_many_pairs"
    http_status = 413


class UnsupportedContentTypeError(ServerError):
    code = "unsupported_media_type"
    http_status = 415


class InvalidRequestError(ServerError):
    """The request does not match the documented schema (missing part, wrong type, bad base64)."""

    code = "invalid_request"
    http_status = 422


class UrlInputDisabledError(InvalidRequestError):
    code = "url_input_disabled"


class UnauthorizedError(ServerError):
    code = "unauthorized"
    http_status = 401


class ForbiddenError(ServerError):
    code = "forbidden"
    http_status = 403


class NotFoundError(ServerError):
    code = "not_found"
    http_status = 404


class EmbedDisabledError(NotFoundError):
    code = "embed_disabled"


class GalleryNotConfiguredError(NotFoundError):
    code = "gallery_not_configured"


class OverloadedError(ServerError):
    """The inference queue is full; retry after ``Retry-After`` seconds."""

    code = "overloaded"
    http_status = 429


class NotReadyError(ServerError):
    code = "not_ready"
    http_status = 503


def _safe(value: Any, depth: int = 0) -> Any:
    """JSON-safe copy of error details; arrays (possible templates) and deep structures are dropped."""
    if depth > 6 or isinstance(value, np.ndarray):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {str(k): _safe(v, depth + 1) for k, v in value.items() if not isinstance(v, np.ndarray)}
    if isinstance(value, (list, tuple)):
        return [_safe(v, depth + 1) for v in value[:1000]]
    return str(value)


def problem(
    status: int,
    code: str,
    detail: str,
    *,
    instance: str | None = None,
    errors: list[dict[str, Any]] | None = None,
    details: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """A problem+json response."""
    from starlette.responses import JSONResponse

    try:
        title = HTTPStatus(status).phrase
    except ValueError:
        title = "Error"
    body: dict[str, Any] = {
        "type": f"urn:facematch:error:{code}",
        "title": title,
        "status": status,
        "code": code,
        "detail": detail,
    }
    if instance:
        body["instance"] = instance
    if errors:
        body["errors"] = errors
    if details:
        body["details"] = _safe(details)
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def validation_errors(errors: Any) -> list[dict[str, Any]]:
    """Pydantic errors without the offending input (it may be a whole base64 image)."""
    out = []
    for e in list(errors)[:50]:
        loc = [str(p) for p in e.get("loc", ())]
        out.append({"loc": loc, "msg": str(e.get("msg", ""))[:300], "type": str(e.get("type", ""))})
    return out


def facematch_problem(exc: FacematchError, request: Request | None = None, retry_after: int | None = None) -> Response:
    status = int(getattr(exc, "http_status", 400) or 400)
    headers: dict[str, str] = {}
    if retry_after is not None and status in (429, 503):
        headers["Retry-After"] = str(retry_after)
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="facematch"'
    if status == 408:
        headers["Connection"] = "close"  # the rest of the body is not read
    if status >= 500:
        logger.error("%s: %s", exc.code, exc.message)
    details = {k: v for k, v in exc.details.items() if k != "errors"}
    raw_errors = exc.details.get("errors")
    errors = [e for e in raw_errors if isinstance(e, dict)] if isinstance(raw_errors, list) else None
    return problem(
        status,
        exc.code,
        exc.message,
        instance=request.url.path if request is not None else None,
        errors=errors,
        details=details or None,
        headers=headers or None,
    )


def install_error_handlers(app: FastAPI, retry_after_s: int) -> None:
    """Map every error the app can meet to a problem+json response."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from starlette.requests import ClientDisconnect

    async def on_facematch(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, FacematchError)
        return facematch_problem(exc, request, retry_after=retry_after_s)

    async def on_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return problem(
            422,
            "invalid_request",
            "the request does not match the schema",
            instance=request.url.path,
            errors=validation_errors(exc.errors()),
        )

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        codes = {404: "not_found", 405: "method_not_allowed", 400: "bad_request", 413: "payload_too_large"}
        code = codes.get(exc.status_code, f"http_{exc.status_code}")
        headers = dict(exc.headers) if exc.headers else None
        return problem(exc.status_code, code, str(exc.detail), instance=request.url.path, headers=headers)

    async def on_disconnect(request: Request, exc: Exception) -> Response:
        # the client went away mid-request: not a server error. 499 (nginx's "client closed
        # request") is what /metrics counts; nobody is there to read the response.
        from starlette.responses import Response

        logger.info("client disconnected during %s %s (counted as 499)", request.method, request.url.path)
        return Response(status_code=CLIENT_CLOSED_REQUEST)

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        logger.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return problem(500, "internal_error", "internal server error", instance=request.url.path)

    app.add_exception_handler(FacematchError, on_facematch)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(ClientDisconnect, on_disconnect)
    app.add_exception_handler(Exception, on_unexpected)


__all__ = [
    "CLIENT_CLOSED_REQUEST",
    "PROBLEM_JSON",
    "EmbedDisabledError",
    "ForbiddenError",
    "GalleryNotConfiguredError",
    "InvalidRequestError",
    "NotFoundError",
    "NotReadyError",
    "OverloadedError",
    "PayloadTooLargeError",
    "RequestTimeoutError",
    "ServerError",
    "TooManyImagesError",
    "TooManyPairsError",
    "UnauthorizedError",
    "UnsupportedContentTypeError",
    "UrlInputDisabledError",
    "facematch_problem",
    "install_error_handlers",
    "problem",
    "validation_errors",
]
