"""What every route shares and no route owns: the app's runtime, the native response, and the
route class that parses a JSON body once.

A route parses its body, hands the job to the runtime and renders the result; the helpers all
of them use live here, so routes never import each other.
"""

from __future__ import annotations

import typing
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import pydantic
import pydantic_core
from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.routing import request_response

from bestofk.service import results
from bestofk.service.rerank import RerankResult
from bestofk.service.runtime import ClientGone, Runtime


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


def render_json(
    result: RerankResult, return_candidates: bool, headers: Mapping[str, str] | None = None
) -> Response:
    """The native response (``RerankResponse``) as a finished JSON response: its data
    (``results.as_data``, which the OpenAI and Anthropic routes embed as ``bestofk`` as it is)
    serialized once by pydantic's encoder, so FastAPI has nothing left to check or encode.
    Not validated again here: ``tests/test_records.py`` holds ``as_data`` to the model."""
    body = pydantic_core.to_json(results.as_data(result, candidates=return_candidates))
    return Response(body, media_type="application/json", headers=headers)


MISSING = "Field required"
NOT_AN_OBJECT = "Input should be a valid dictionary or object to extract fields from"
"""What FastAPI says of a body it does not read as JSON: its model meets the body's bytes."""


def is_json(content_type: str) -> bool:
    """Whether a ``content-type`` names JSON as FastAPI decides it: ``application/json`` or
    ``application/*+json``, in any case, parameters (``; charset=utf-8``) aside."""
    kind, _, subtype = content_type.partition(";")[0].strip().lower().partition("/")
    return (
        kind == "application"
        and "/" not in subtype
        and (subtype == "json" or subtype.endswith("+json"))
    )


def _body_error(kind: str, message: str, raw: bytes | None) -> RequestValidationError:
    """FastAPI's error for a body that cannot be the model at all, located at ``body``."""
    return RequestValidationError([{"type": kind, "loc": ("body",), "msg": message, "input": raw}])


class JsonBodyRoute(APIRoute):
    """A route whose endpoint takes ``(body, request)`` and returns a ``Response``: the body is
    validated from its bytes straight into the endpoint's model (pydantic's own JSON parser,
    no ``json.loads`` and no second walk over a dict), and no dependencies are solved. The
    OpenAPI schema still comes from the endpoint's signature and ``response_model``.

    What FastAPI would answer for a bad body is kept: a ``RequestValidationError`` whose
    locations start with ``body``, which the app's handler turns into the API's 400. A body
    whose ``content-type`` is not JSON (:func:`is_json`) is refused as FastAPI refuses it;
    one without a ``content-type`` is read as JSON (FastAPI's ``strict_content_type=False``),
    as clients that send none have always been served.
    """

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        model = typing.get_type_hints(endpoint)["body"]
        if not (isinstance(model, type) and issubclass(model, pydantic.BaseModel)):
            raise TypeError(f"{endpoint.__name__}: body must be a pydantic model, not {model}")
        call: Callable[[Any, Request], Awaitable[Response]] = endpoint
        validate = model.model_validate_json

        async def handle(request: Request) -> Response:
            raw = await request.body()
            if not raw:  # as FastAPI words a missing required body
                raise _body_error("missing", MISSING, None)
            content_type = request.headers.get("content-type")
            if content_type and not is_json(content_type):
                raise _body_error("model_attributes_type", NOT_AN_OBJECT, raw)
            try:
                body = validate(raw)
            except pydantic.ValidationError as exc:
                errors = exc.errors(include_url=False)
                for error in errors:
                    error["loc"] = ("body", *error["loc"])
                raise RequestValidationError(errors) from None
            return await call(body, request)

        # Starlette's wrapper: the request, the app's exception handlers, the response; none
        # of FastAPI's per-request exit stacks, which only dependencies with yield need.
        self.app = request_response(handle)


E = typing.TypeVar("E", bound=Callable[..., Any])


def post_json(router: APIRouter, path: str, **kwargs: Any) -> Callable[[E], E]:
    """``@router.post(path, ...)`` for an endpoint served by :class:`JsonBodyRoute`."""

    def register(endpoint: E) -> E:
        router.add_api_route(
            path, endpoint, methods=["POST"], route_class_override=JsonBodyRoute, **kwargs
        )
        return endpoint

    return register
