"""Request bodies: a byte limit, a read timeout and a minimum upload rate (pure ASGI middleware).

The body of every HTTP request is read through :class:`BodyGuardMiddleware`:

* more than ``max_bytes`` → 413 ``payload_too_large`` (from ``Content-Length`` up front, else
  while streaming);
* not all there ``timeout_s`` after the request started → 408 ``request_timeout``;
* slower than ``min_rate`` bytes/s on average, after a head start of ``UPLOAD_GRACE_S``
  seconds → 408 ``request_timeout``. A client that sends a multipart header and then a
  byte now and then is cut off after a few seconds instead of holding its connection.

The routes read and size-check the whole body *before* they take an inference slot, so a
slow upload holds a connection and a coroutine, never a slot (docs/server.md, "Slow clients").
What this cannot do (connection limits, slow headers, TLS) belongs to a reverse proxy.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from .errors import PayloadTooLargeError, RequestTimeoutError, problem

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

UPLOAD_GRACE_S = 5.0  # seconds a body may take before the minimum rate applies


class BodyGuardMiddleware:
    """413 above ``max_bytes``; 408 when the body is not complete in ``timeout_s`` or arrives below ``min_rate``."""

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float | None = None, min_rate: float = 0.0) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.min_rate = min_rate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared < 0 or declared > self.max_bytes:
                    status, code = (413, "payload_too_large") if declared > 0 else (400, "bad_request")
                    msg = f"the request body is larger than {self.max_bytes} bytes" if status == 413 else "bad length"
                    await problem(status, code, msg, instance=scope.get("path"))(scope, receive, send)
                    return
        loop = asyncio.get_running_loop()
        start = loop.time()
        seen = 0
        done = False

        def deadline() -> float:
            limit = float("inf") if self.timeout_s is None else start + self.timeout_s
            if self.min_rate > 0:
                limit = min(limit, start + UPLOAD_GRACE_S + seen / self.min_rate)
            return limit

        async def guarded_receive() -> Message:
            nonlocal seen, done
            if done:  # the body is complete: later receives wait for a disconnect, unguarded
                return await receive()
            remaining = deadline() - loop.time()
            if remaining <= 0:
                raise self._timeout(seen, loop.time() - start)
            if remaining == float("inf"):
                message = await receive()
            else:
                try:
                    message = await asyncio.wait_for(receive(), remaining)
                except asyncio.TimeoutError:
                    raise self._timeout(seen, loop.time() - start) from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise PayloadTooLargeError(f"the request body is larger than {self.max_bytes} bytes")
                if not message.get("more_body", False):
                    done = True
            else:
                done = True
            return message

        await self.app(scope, guarded_receive, send)

    def _timeout(self, seen: int, elapsed: float) -> RequestTimeoutError:
        if self.timeout_s is not None and elapsed >= self.timeout_s:
            why = f"the request body was not complete after {self.timeout_s:g} s"
        else:
            why = f"the request body arrives slower than {self.min_rate:g} bytes/s"
        return RequestTimeoutError(f"{why} ({seen} bytes in {elapsed:.1f} s)", received=seen)


BodyLimitMiddleware = BodyGuardMiddleware  # the name before the timeouts were added

__all__ = ["UPLOAD_GRACE_S", "BodyGuardMiddleware", "BodyLimitMiddleware"]
