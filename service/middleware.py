"""Pure ASGI middleware: request metrics and the body-size bound.

Pure ASGI (not ``BaseHTTPMiddleware``) so streaming responses and disconnects pass through.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import http.cookies
import json
import time
import urllib.parse
from collections.abc import Sequence

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bestofk.service.errors import AuthenticationError, BestOfKError, PayloadTooLargeError
from bestofk.service.metrics import Metrics

_UNMATCHED = "other"


async def send_error(send: Send, error: BestOfKError, scope: Scope) -> None:
    """Answer with ``error`` in the envelope of the API the request's path belongs to, from
    below the framework."""
    body = json.dumps(error.body_for(scope.get("path", ""))).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *((k.lower().encode(), v.encode()) for k, v in error.headers().items()),
    ]
    await send({"type": "http.response.start", "status": error.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class RequestMetricsMiddleware:
    """Counts requests by endpoint and status and times them, into the app's ``metrics``."""

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
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", _UNMATCHED)
            self.metrics.request(endpoint, status, time.perf_counter() - start)


class BodyLimitMiddleware:
    """Refuses bodies over ``max_bytes`` with 413, whether announced or sent chunked.

    A declared ``Content-Length`` is checked up front (the HTTP server holds the client to it);
    a chunked body is read here, up to the bound, and handed on whole, because an error
    raised from inside the app's body parsing would come out as FastAPI's generic 400.

    Before answering 413 it reads and discards the rest of the body, up to ``DISCARD_BYTES``
    and ``DISCARD_S``: a client that sends its whole body before reading (Python's urllib, any
    client without ``Expect: 100-continue``) would otherwise see the connection reset, as the
    kernel answers unread data on a closed socket with RST, instead of the 413.
    """

    DISCARD_BYTES = 64 * 1024 * 1024
    DISCARD_S = 10.0

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None:
            if length.isdigit() and int(length) > self.max_bytes:
                await self._discard(receive, 0)
                await self._refuse(send, scope)
                return
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        received = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left before its body was complete
            chunks.append(message.get("body", b""))
            received += len(chunks[-1])
            if received > self.max_bytes:
                if message.get("more_body", False):
                    await self._discard(receive, received)
                await self._refuse(send, scope)
                return
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)

    async def _discard(self, receive: Receive, received: int) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.DISCARD_S):
                while received <= self.DISCARD_BYTES:
                    message = await receive()
                    if message["type"] != "http.request":
                        return
                    received += len(message.get("body", b""))
                    if not message.get("more_body", False):
                        return

    async def _refuse(self, send: Send, scope: Scope) -> None:
        error = PayloadTooLargeError(f"request body exceeds {self.max_bytes} bytes")
        await send_error(send, error, scope)


UI_PREFIX = "/ui"
UI_LOGIN = "/ui/login"
UI_COOKIE = "bestofk_ui"


def ui_token(key: str) -> str:
    """The trace pages' cookie for an API key: a digest, so the cookie is not the key itself
    (and opens only the pages, not the API); the same in every worker process."""
    return hashlib.sha256(b"bestofk-ui\0" + key.encode()).hexdigest()


def is_ui_path(path: str) -> bool:
    """Whether ``path`` is one of the trace pages."""
    return path == UI_PREFIX or path.startswith(UI_PREFIX + "/")


class ApiKeyMiddleware:
    """API-key auth on every route but the ones probes and scrapers need: a Bearer token (what
    OpenAI clients send) or an ``x-api-key`` header (what Anthropic's send).

    The trace pages (``ui``: they are served) also take the cookie their login form sets
    (:func:`ui_token`), and send a browser without either to that form rather than a 401.
    """

    OPEN_PATHS = frozenset({"/health", "/metrics"})

    def __init__(self, app: ASGIApp, keys: Sequence[str], ui: bool = False) -> None:
        self.app = app
        self.keys = [k.encode() for k in keys]
        self.ui_tokens = [ui_token(k).encode() for k in keys]
        self.ui = ui

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.OPEN_PATHS or self._allowed(scope):
            await self.app(scope, receive, send)
            return
        if self.ui and is_ui_path(scope["path"]):
            if scope["path"] == UI_LOGIN or self._ui_cookie(scope):
                await self.app(scope, receive, send)
            else:
                await _see_login(scope, send)
            return
        error = AuthenticationError("invalid or missing API key (Bearer token or x-api-key)")
        await send_error(send, error, scope)

    def _allowed(self, scope: Scope) -> bool:
        headers = dict(scope["headers"])
        scheme, _, token = headers.get(b"authorization", b"").partition(b" ")
        if scheme.lower() != b"bearer":
            token = headers.get(b"x-api-key", b"")
            if not token:
                return False
        return _any_equal(token.strip(), self.keys)

    def _ui_cookie(self, scope: Scope) -> bool:
        cookies = http.cookies.SimpleCookie()
        with contextlib.suppress(http.cookies.CookieError):
            cookies.load(dict(scope["headers"]).get(b"cookie", b"").decode("latin-1"))
        morsel = cookies.get(UI_COOKIE)
        return morsel is not None and _any_equal(morsel.value.encode(), self.ui_tokens)


def _any_equal(token: bytes, keys: Sequence[bytes]) -> bool:
    # Compare against every key so timing does not reveal which prefix matched.
    return any([hmac.compare_digest(token, key) for key in keys])


async def _see_login(scope: Scope, send: Send) -> None:
    """303 to the login form, which sends the browser back to this page once it has the key."""
    target = scope["path"] + (
        "?" + scope["query_string"].decode("latin-1") if scope["query_string"] else ""
    )
    location = f"{UI_LOGIN}?{urllib.parse.urlencode({'next': target})}".encode()
    headers = [(b"location", location), (b"content-length", b"0")]
    await send({"type": "http.response.start", "status": 303, "headers": headers})
    await send({"type": "http.response.body", "body": b""})
