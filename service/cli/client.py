"""The HTTP client the client commands (``generate``, ``eval``) share: a running server, or
an in-process one over a model, and the flags that choose between them."""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Annotated, Any

import typer

from bestofk.service.cli.common import CliError, settings

if TYPE_CHECKING:
    import httpx

DEFAULT_URL = "http://127.0.0.1:8000"
"""Where ``bestofk serve`` listens by default: clients try it before loading a model."""

UrlOption = Annotated[
    str | None,
    typer.Option(
        envvar="BESTOFK_URL",
        metavar="URL",
        help=f"A running bestofk server (default: {DEFAULT_URL} if it answers, else the "
        "model loads in-process).",
    ),
]
ApiKeyOption = Annotated[
    str | None,
    typer.Option(
        envvar=["BESTOFK_API_KEY", "OPENAI_API_KEY"],
        metavar="KEY",
        show_default=False,
        help="Bearer key for a server started with --api-key.",
    ),
]
SERVER_DEFAULT = "Default: the server's (its profile's, else its own)."
"""The help of a sampling option the client sends only when given."""
ModelOption = Annotated[
    str | None,
    typer.Option(metavar="PATH", help="Load this model in-process instead of using a server."),
]


def sampling_sent(**fields: Any) -> dict[str, Any]:
    """The sampling fields given on the command line: the client sends no defaults of its own,
    so the server's (and its profiles') apply."""
    return {name: value for name, value in fields.items() if value is not None}


@dataclasses.dataclass(frozen=True, slots=True)
class Target:
    """Where requests go: a server URL, a model to load in-process, and the key to send."""

    url: str | None
    model: str | None
    api_key: str | None


@contextlib.asynccontextmanager
async def client(target: Target) -> AsyncIterator[httpx.AsyncClient]:
    """A client for the server at ``target.url`` (or the default one, when it answers), or for
    an in-process one over ``target.model``."""
    import httpx
    from rich.console import Console

    from bestofk.service import server

    headers = {"authorization": f"Bearer {target.api_key}"} if target.api_key else {}
    base = server_url(target.url, target.model)
    if base is not None:
        async with httpx.AsyncClient(base_url=base, headers=headers) as remote:
            yield remote
        return
    from bestofk.service.app import create_app

    server.engine_env()
    # The table is the output: the engine's logs (and its processes', which inherit the
    # environment) go to stderr.
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    local = settings(model=target.model)
    server.check_model(local.model)
    err = Console(stderr=True)
    why = "" if target.model else f"no server at {DEFAULT_URL}: "
    err.print(
        f"{why}loading {local.model} in-process, which takes a minute (`bestofk serve` once, "
        "and every call after takes a second)"
    )
    app = create_app(local)
    async with app.router.lifespan_context(app):
        with err.status("loading the model…"):
            try:
                await app.state.engine_loading
            except Exception as exc:
                raise CliError(f"the engine failed to start: {exc}") from None
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://bestofk", headers=headers
        ) as in_process:
            yield in_process


def server_url(url: str | None, model: str | None) -> str | None:
    """The server to use: ``--url``, else the default address when something answers there
    and no ``--model`` asks for an in-process engine; None: load the model in-process."""
    import httpx

    if url:
        if model:
            raise typer.BadParameter(
                "--model loads a model in-process; the server at --url (or BESTOFK_URL) serves "
                "its own. Give one of them.",
                param_hint="--model",
            )
        return url.rstrip("/")
    if model:
        return None
    try:
        httpx.get(DEFAULT_URL + "/health", timeout=1.0)
    except httpx.HTTPError:
        return None
    return DEFAULT_URL
