"""Every error a client can meet, each mapped to one HTTP status, one OpenAI error type and
a default ``code``.

    BestOfKError                    500 internal_error          internal_error
    ├── InvalidRequestError         400 invalid_request_error   invalid_value   (carries ``param``)
    │   └── PayloadTooLargeError    413 invalid_request_error   payload_too_large
    ├── AuthenticationError         401 authentication_error    invalid_api_key
    ├── NotFoundError               404 not_found_error         not_found       (model_not_found,
    │                                                                            profile_not_found)
    ├── OverloadedError             503 overloaded_error        overloaded      (``retry_after_s``)
    │   ├── RateLimitedError        429 rate_limit_error        rate_limit_exceeded
    │   ├── EngineNotReadyError     503 overloaded_error        engine_not_ready (health: when)
    │   └── ShuttingDownError       503 overloaded_error        shutting_down   (at SIGTERM)
    ├── BackendError                502 backend_error           backend_error   (a remote engine)
    └── DeadlineExceededError       504 timeout_error           timeout         (nothing verified)

Native and OpenAI routes render them the same way: ``{"error": {message, type, param, code}}``
with the status above; the Anthropic route (``/v1/messages``) as Anthropic's API does,
``{"type": "error", "error": {type, message}}`` with the same status and the type
``anthropic_type`` names (``api_error`` for the 500 and 502, ``request_too_large`` for 413);
plus ``Retry-After`` for the overload family and ``WWW-Authenticate`` for 401. ``code`` is
always a string, as in OpenAI's API (``invalid_api_key``, ``model_not_found``…), never the
status number: clients switch on it, the status is the HTTP status line.

Engines raise their own errors (:mod:`bestofk.service.engines.errors`), which know nothing of
HTTP; :func:`api_error` maps them to these, the one place that does.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

from bestofk.service.engines.errors import (
    EngineError,
    EngineFailedError,
    EngineTimeoutError,
    EngineUnavailableError,
    RequestRejectedError,
)


class BestOfKError(Exception):
    """Base of every error that is rendered to a client."""

    status_code: ClassVar[int] = 500
    error_type: ClassVar[str] = "internal_error"
    default_code: ClassVar[str] = "internal_error"
    anthropic_type: ClassVar[str] = "api_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code

    def headers(self) -> dict[str, str]:
        """Extra response headers this error needs."""
        return {}

    def body(self) -> dict[str, Any]:
        """The error envelope, shaped as OpenAI's so its client raises the right exception."""
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code or self.default_code,
            }
        }

    def anthropic_body(self) -> dict[str, Any]:
        """The error envelope of Anthropic's API, so its SDK raises the right exception."""
        return {"type": "error", "error": {"type": self.anthropic_type, "message": self.message}}

    def body_for(self, path: str) -> dict[str, Any]:
        """The envelope of the API ``path`` belongs to."""
        return self.anthropic_body() if is_anthropic_path(path) else self.body()


ANTHROPIC_PATH = "/v1/messages"


def is_anthropic_path(path: str) -> bool:
    """Whether ``path`` is served in Anthropic's shapes (its errors included)."""
    return path == ANTHROPIC_PATH or path.startswith(ANTHROPIC_PATH + "/")


class InvalidRequestError(BestOfKError):
    """The request is malformed or asks for something out of bounds."""

    status_code = 400
    error_type = "invalid_request_error"
    default_code = "invalid_value"
    anthropic_type = "invalid_request_error"


class PayloadTooLargeError(InvalidRequestError):
    """The body, prompt or a list in it is larger than the configured limit."""

    status_code = 413
    default_code = "payload_too_large"
    anthropic_type = "request_too_large"


class AuthenticationError(BestOfKError):
    """Missing or unknown API key."""

    status_code = 401
    error_type = "authentication_error"
    default_code = "invalid_api_key"
    anthropic_type = "authentication_error"

    def headers(self) -> dict[str, str]:
        """The scheme to authenticate with (RFC 9110: a 401 must name one)."""
        return {"WWW-Authenticate": "Bearer"}


class NotFoundError(BestOfKError):
    """Unknown model or profile."""

    status_code = 404
    error_type = "not_found_error"
    default_code = "not_found"
    anthropic_type = "not_found_error"


class OverloadedError(BestOfKError):
    """The service cannot take this request now; the client should retry later."""

    status_code = 503
    error_type = "overloaded_error"
    default_code = "overloaded"
    anthropic_type = "overloaded_error"

    def __init__(self, message: str, *, retry_after_s: float = 1.0, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        """Retry-After: when the condition can next change."""
        return retry_after(self.retry_after_s)


def retry_after(seconds: float) -> dict[str, str]:
    """The Retry-After header for ``seconds``: whole seconds, rounded up (retrying before the
    state can change is wasted), at least one."""
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


class RateLimitedError(OverloadedError):
    """Too many requests in flight; OpenAI clients expect 429 for this."""

    status_code = 429
    error_type = "rate_limit_error"
    default_code = "rate_limit_exceeded"
    anthropic_type = "rate_limit_error"


class EngineNotReadyError(OverloadedError):
    """The engine is loading or dead, or no backend is usable (Retry-After: when that can next
    change, from the engine's ``health``)."""

    default_code = "engine_not_ready"


class ShuttingDownError(OverloadedError):
    """The server is draining before it stops; another replica (or this one, restarted) will
    take the request."""

    default_code = "shutting_down"


class BackendError(BestOfKError):
    """A remote engine failed or answered something unusable."""

    status_code = 502
    error_type = "backend_error"
    default_code = "backend_error"


class DeadlineExceededError(BestOfKError):
    """The request's deadline passed before any candidate was verified."""

    status_code = 504
    error_type = "timeout_error"
    default_code = "timeout"
    anthropic_type = "timeout_error"


def api_error(exc: EngineError) -> BestOfKError:
    """The client's error for what an engine raised: the one mapping of engine errors to
    statuses, types, codes and Retry-After."""
    if isinstance(exc, EngineUnavailableError):
        return EngineNotReadyError(exc.message, retry_after_s=exc.retry_after_s)
    if isinstance(exc, RequestRejectedError):
        return InvalidRequestError(exc.message, param=exc.param)
    if isinstance(exc, EngineTimeoutError):
        return DeadlineExceededError(exc.message)
    if isinstance(exc, EngineFailedError):
        return BackendError(exc.message)
    return BestOfKError(f"internal error: {type(exc).__name__}")
