"""What the commands share: the console, expected failures, settings from flags."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from rich.console import Console

if TYPE_CHECKING:
    import httpx

    from bestofk.service.settings import Settings

console = Console()


class CliError(Exception):
    """An expected failure: ``main`` prints its message as one line and exits 1."""


def settings(**overrides: Any) -> Settings:
    """The server's settings with the flags that were given (None or empty: not given)."""
    from bestofk.service.settings import Settings

    return Settings(**{k: v for k, v in overrides.items() if v not in (None, [], ())})


def describe_error(exc: BaseException) -> str | None:
    """One line for an error a user can meet and act on; None for a bug (keeps its traceback)."""
    import httpx
    import pydantic
    import yaml

    from bestofk.service.records.format import RecordFormatError
    from bestofk.service.server import PreflightError
    from bestofk.tooling.evaluation import TaskFileError
    from bestofk.tooling.records.export import ExportError

    if isinstance(exc, CliError | PreflightError | TaskFileError | ExportError | RecordFormatError):
        return str(exc)
    if isinstance(exc, httpx.HTTPStatusError):
        return _describe_status(exc.response)
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        url = exc.request.url
        return (
            f"cannot connect to {url.scheme}://{url.netloc.decode()}: {_reason(exc)} "
            "(start one with `bestofk serve`, or pass --url)"
        )
    if isinstance(exc, httpx.TimeoutException):
        return f"no answer from {exc.request.url} in time: {_reason(exc)}"
    if isinstance(exc, httpx.HTTPError):
        return f"{exc.request.url}: {_reason(exc)}"
    if isinstance(exc, pydantic.ValidationError):
        problems = [
            f"{'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}" for e in exc.errors()
        ]
        return "invalid settings: " + "; ".join(problems)
    if isinstance(exc, yaml.YAMLError):
        return f"not valid YAML: {' '.join(str(exc).split())}"
    if isinstance(exc, OSError):
        if exc.filename is not None:
            return f"{exc.filename}: {exc.strerror or exc}"
        return str(exc)
    return None


def _describe_status(reply: httpx.Response) -> str:
    """``401 from URL: message`` with the API's own error message and, for 401, the fix."""
    message = reply.text.strip()
    with contextlib.suppress(ValueError, KeyError, TypeError, AttributeError):
        message = reply.json()["error"]["message"]
    line = f"{reply.status_code} from {reply.request.url}: {' '.join(message.split())}"
    if reply.status_code == 401:
        line += " (pass --api-key, or set BESTOFK_API_KEY)"
    return line


def _reason(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
