"""What an engine raises when it cannot serve a request, in the engine's own terms.

Engines know nothing of HTTP: the edge maps each of these to the API's error (status, type,
code, Retry-After) in one place, :func:`bestofk.service.errors.api_error`.

    EngineError                 a request the engine could not serve
    ├── EngineUnavailableError  no engine to take it now (loading, dead, no usable backend);
    │                           ``retry_after_s``: when that can next change
    ├── RequestRejectedError    the engine refuses the request as given (``param``: the field)
    ├── EngineFailedError       the engine or a remote backend failed, or answered nonsense
    └── EngineTimeoutError      a remote backend stopped answering mid-request
"""

from __future__ import annotations


class EngineError(Exception):
    """Base of what an engine raises about a request it could not serve."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class EngineUnavailableError(EngineError):
    """The engine cannot take requests now: loading, dead and restarting, or no backend is
    usable; ``retry_after_s`` says when that can next change (the engine's ``health``)."""

    def __init__(self, message: str, *, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class RequestRejectedError(EngineError):
    """The engine (or a backend) refuses the request as given: the client's to fix."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        """The request field at fault, when the engine says which."""


class EngineFailedError(EngineError):
    """The engine failed, or a remote backend failed or answered something unusable."""


class EngineTimeoutError(EngineError):
    """A remote backend stopped answering before the request was done."""
