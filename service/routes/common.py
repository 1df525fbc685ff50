"""What every route shares and no route owns: the app's runtime, and the native response.

A route parses its body, hands the job to the runtime and renders the result; the helpers all
of them use live here, so routes never import each other.
"""

from __future__ import annotations

from fastapi import Request

from bestofk.service import results
from bestofk.service.pipeline import RerankResult
from bestofk.service.runtime import ClientGone, Runtime
from bestofk.service.schemas.native import RerankResponse


def runtime(request: Request) -> Runtime:
    """The app's runtime (set in the lifespan)."""
    rt: Runtime = request.app.state.runtime
    return rt


def client_gone(request: Request) -> ClientGone:
    """The wait the runtime cancels a request's work on: the ASGI ``http.disconnect``."""

    async def gone() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    return gone


def trace_link(rt: Runtime, request_id: str) -> dict[str, str]:
    """The header pointing at the request's trace page (none with ``--no-ui``): a ``Link``
    (RFC 8288) with the registered relation ``describedby``, relative, so it holds behind any
    proxy that keeps the path; a header, so the native and OpenAI bodies stay as they are."""
    if not rt.settings.ui:
        return {}
    return {"Link": f'</ui/requests/{request_id}>; rel="describedby"'}


def render(result: RerankResult, return_candidates: bool) -> RerankResponse:
    """The native response for a result (also embedded in OpenAI responses as ``bestofk``)."""
    return RerankResponse.model_validate(results.as_data(result, candidates=return_candidates))
