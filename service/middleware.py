"""Pure ASGI middleware: request metrics and the body-size bound.

Pure ASGI (not ``BaseHTTPMiddleware``) so streaming responses and disconnects pass through.
"""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Sequence

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import metrics
from service.errors import AuthenticationError, BestOfKError, PayloadTooLargeError

_UNMATCHED = "other"


async def send_error(send: Send, error: BestOfKError) -> None:
    """Answer with ``error`` in the API's envelope, from below the framework."""
    body = json.dumps(error.body()).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *((k.lower().encode(), v.encode()) for k, v in error.headers().items()),
    ]
    await send({"type": "http.response.start", "status": error.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class RequestMetricsMiddleware:
    """Counts requests by endpoint and status and times them."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", _UNMATCHED)
            metrics.REQUESTS.labels(endpoint, str(status)).inc()
            metrics.REQUEST_DURATION.labels(endpoint).observe(time.perf_counter() - start)


class BodyLimitMiddleware:
    """Refuses bodies over ``max_bytes`` with 413, whether announced or streamed."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await self._refuse(send)
            return
        received = 0
        response_started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _TooLargeError
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            response_started = response_started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLargeError:
            if not response_started:
                await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        await send_error(send, PayloadTooLargeError(f"request body exceeds {self.max_bytes} bytes"))


class _TooLargeError(Exception):
    pass


class ApiKeyMiddleware:
    """Bearer-token auth on every route but the ones probes and scrapers need."""

    OPEN_PATHS = frozenset({"/health", "/metrics"})

    def __init__(self, app: ASGIApp, keys: Sequence[str]) -> None:
        self.app = app
        self.keys = [k.encode() for k in keys]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.OPEN_PATHS or self._allowed(scope):
            await self.app(scope, receive, send)
            return
        await send_error(send, AuthenticationError("invalid or missing API key (Bearer token)"))

    def _allowed(self, scope: Scope) -> bool:
        header = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, token = header.partition(b" ")
        if scheme.lower() != b"bearer":
            return False
        # Compare against every key so timing does not reveal which prefix matched.
        return any([hmac.compare_digest(token.strip(), key) for key in self.keys])
