"""Anthropic's Messages API: ``POST /v1/messages`` over the same pipeline.

The request is vLLM's Anthropic model (plus bestofk's fields), turned into chat messages by
vLLM's own converter (``AnthropicServingMessages.to_chat_completion_request``): system prompts,
text, ``tool_use`` and ``tool_result`` blocks become the OpenAI messages the chat template
renders. The chosen candidate comes back as a Message (or its event stream), the native
response as ``bestofk``; errors use Anthropic's envelope (:mod:`bestofk.service.errors`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Body, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError

from bestofk.service.engines.base import Prompt
from bestofk.service.errors import BestOfKError, InvalidRequestError
from bestofk.service.jobs import JobRequest, new_request_id
from bestofk.service.rerank import RerankJob, RerankResult
from bestofk.service.results import as_data
from bestofk.service.routes.common import client_gone, runtime
from bestofk.service.runtime import Runtime
from bestofk.service.selection import Scored
from bestofk.verifiers.base import ToolCall

if TYPE_CHECKING:
    from bestofk.service.schemas.anthropic import MessagesRequest

router = APIRouter(prefix="/v1")

PING_S = 1.0
"""How often a streaming response sends a ``ping`` event while candidates are verified."""


def _parse(raw: dict[str, Any]) -> MessagesRequest:
    # Imported here: vLLM's protocol module costs seconds to import, paid at the first
    # Anthropic request rather than by every server and test that never makes one.
    from bestofk.service.schemas.anthropic import MessagesRequest

    try:
        return MessagesRequest.model_validate(raw)
    except ValidationError as exc:
        # The app's validation handler renders it, in this route's envelope.
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]
        ) from None


def _chat(body: MessagesRequest) -> tuple[Prompt, str | dict[str, Any] | None]:
    """The conversation as OpenAI chat messages and tools, and the tool choice, by vLLM's
    converter (``tool_use`` blocks become ``tool_calls``, ``tool_result`` ones ``tool``
    messages, ``any`` becomes ``required``)."""
    from vllm.entrypoints.anthropic.serving import AnthropicServingMessages

    try:
        chat = AnthropicServingMessages.to_chat_completion_request(body)
    except (ValueError, ValidationError) as exc:
        raise InvalidRequestError(f"could not convert the messages: {exc}") from None
    # As vLLM hands them to the template: every field, unset ones null.
    tools = [t.model_dump() for t in chat.tools] if chat.tools else None
    raw = chat.tool_choice if tools else None
    choice: str | dict[str, Any] | None = (
        raw if raw is None or isinstance(raw, str) else raw.model_dump(exclude_none=True)
    )
    return Prompt(messages=[dict(m) for m in chat.messages], tools=tools), choice


def _job(rt: Runtime, body: MessagesRequest, arrived: float) -> RerankJob:
    prompt, tool_choice = _chat(body)
    schema = body.json_schema
    sampling = {
        "temperature": body.temperature,
        "top_p": body.top_p,
        "top_k": body.top_k,
        "max_tokens": body.max_tokens,
        "stop": body.stop_sequences or None,
        "json_schema": schema,
    }
    return rt.jobs.build(
        new_request_id("msg"),
        JobRequest(
            prompt=prompt,
            model=body.model,
            sampling=sampling,
            **body.job_fields(),
            tool_choice=tool_choice,
            arrived=arrived,
        ),
    )


@router.post("/messages", response_model=None)
async def messages(
    request: Request, raw: Annotated[dict[str, Any], Body()]
) -> JSONResponse | StreamingResponse:
    """The best of K candidates as an Anthropic Message (or its event stream)."""
    arrived = time.perf_counter()
    rt = runtime(request)
    body = _parse(raw)
    job = _job(rt, body, arrived)
    headers = {"X-Request-Id": job.request_id, "request-id": job.request_id}
    if body.stream:
        events = _stream(rt, job, body)
        await anext(events)  # admitted: a refusal is still a status, not an event
        return StreamingResponse(
            events, media_type="text/event-stream", headers={**headers, "Cache-Control": "no-cache"}
        )
    result = await rt.execute(job, client_gone(request), openai=True)
    message = _message(job.request_id, result.model)
    message["content"] = _content(result.chosen, body)
    message |= _stop(result.chosen, body)
    message["usage"] = _usage(result)
    message["bestofk"] = as_data(result, candidates=body.return_candidates)
    return JSONResponse(message, headers=headers)


def _message(request_id: str, model: str) -> dict[str, Any]:
    """A Message with no content yet (``message_start`` sends it so)."""
    return {
        "id": request_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 0, "output_tokens": 0},
    }


def _calls(scored: Scored, body: MessagesRequest) -> list[ToolCall]:
    parsed = scored.candidate.calls
    calls = list(parsed.calls) if parsed is not None else []
    parallel = body.tool_choice is None or not body.tool_choice.disable_parallel_tool_use
    return calls if parallel else calls[:1]


def _content(scored: Scored, body: MessagesRequest) -> list[dict[str, Any]]:
    """The chosen candidate as content blocks: its text, or the text around its tool calls
    and a ``tool_use`` block for each."""
    calls = _calls(scored, body)
    if not calls:
        return [{"type": "text", "text": scored.candidate.text}]
    parsed = scored.candidate.calls
    text = parsed.content if parsed is not None else None
    blocks: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
    for call in calls:
        try:
            arguments = json.loads(call.arguments)
        except ValueError:
            arguments = None
        # ``input`` must be an object; arguments that are none (its verdict says so) give {}.
        blocks.append(
            {
                "type": "tool_use",
                "id": call.id,
                "name": call.name,
                "input": arguments if isinstance(arguments, dict) else {},
            }
        )
    return blocks


def _stop(scored: Scored, body: MessagesRequest) -> dict[str, str | None]:
    """Anthropic's ``stop_reason`` and ``stop_sequence`` for the chosen candidate's finish."""
    candidate = scored.candidate
    if candidate.finish_reason == "length":
        return {"stop_reason": "max_tokens", "stop_sequence": None}
    if _calls(scored, body):
        return {"stop_reason": "tool_use", "stop_sequence": None}
    if candidate.stop_reason is not None:
        return {"stop_reason": "stop_sequence", "stop_sequence": candidate.stop_reason}
    return {"stop_reason": "end_turn", "stop_sequence": None}


def _usage(result: RerankResult) -> dict[str, int]:
    # Every candidate's tokens, as the OpenAI route's usage counts them: K were generated.
    return {"input_tokens": result.prompt_tokens, "output_tokens": result.completion_tokens}


def _event(name: str, payload: dict[str, Any]) -> bytes:
    data = json.dumps({"type": name, **payload}, separators=(",", ":"))
    return f"event: {name}\ndata: {data}\n\n".encode()


async def _stream(rt: Runtime, job: RerankJob, body: MessagesRequest) -> AsyncIterator[bytes]:
    """Anthropic's event sequence: ``message_start`` once admitted, ``ping`` while candidates
    are verified, then the chosen candidate's content blocks (``content_block_start``,
    ``content_block_delta``, ``content_block_stop``), ``message_delta`` with the stop reason,
    the usage and ``bestofk``, and ``message_stop``. An error after the status line goes out
    as an ``error`` event."""
    prepared = rt.pipeline.prepare(job)
    async with rt.admitted(needs_engine=job.given is None, openai=True):
        yield b""
        # The SDK accepts no event before message_start: it opens the stream at once, with
        # the usage known so far; message_delta carries the final counts.
        yield _event("message_start", {"message": _message(job.request_id, rt.engine.model_name)})
        work = asyncio.ensure_future(rt.run(job, prepared=prepared))
        try:
            while not work.done():
                done, _ = await asyncio.wait({work}, timeout=PING_S)
                if not done:
                    yield _event("ping", {})
            result = work.result()
        except BestOfKError as exc:
            yield _event("error", {"error": exc.anthropic_body()["error"]})
            return
        finally:
            if not work.done():
                work.cancel()
                with contextlib.suppress(BaseException):
                    await work
    for index, block in enumerate(_content(result.chosen, body)):
        yield _event("content_block_start", {"index": index, "content_block": _opened(block)})
        yield _event("content_block_delta", {"index": index, "delta": _delta(block)})
        yield _event("content_block_stop", {"index": index})
    delta = _stop(result.chosen, body)
    native = as_data(result, candidates=body.return_candidates)
    yield _event("message_delta", {"delta": delta, "usage": _usage(result), "bestofk": native})
    yield _event("message_stop", {})


def _opened(block: dict[str, Any]) -> dict[str, Any]:
    """A block as ``content_block_start`` opens it: empty, its content to follow as deltas."""
    if block["type"] == "tool_use":
        return {**block, "input": {}}
    return {**block, "text": ""}


def _delta(block: dict[str, Any]) -> dict[str, Any]:
    if block["type"] == "tool_use":
        return {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}
    return {"type": "text_delta", "text": block["text"]}
