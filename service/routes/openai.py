"""The OpenAI-compatible API: ``/v1/chat/completions`` and ``/v1/completions``.

Same pipeline as the native API; only parsing and rendering differ. ``best_of`` is K, ``n`` the
number of distinct top candidates returned; the native response rides along as ``bestofk``.
Here a request becomes its jobs; :mod:`.openai_choices` renders the chosen candidates and
:mod:`.openai_response` sends them, whole or streamed.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from bestofk.service.engines.base import Prompt
from bestofk.service.errors import InvalidRequestError
from bestofk.service.jobs import JobRequest, new_request_id
from bestofk.service.rerank import RerankJob
from bestofk.service.routes.common import runtime
from bestofk.service.routes.openai_choices import ChatRenderer, CompletionRenderer
from bestofk.service.routes.openai_response import respond
from bestofk.service.runtime import Runtime
from bestofk.service.schemas.openai import BestOfKFields, ChatCompletionRequest, CompletionRequest

router = APIRouter(prefix="/v1")


def _logit_bias(raw: dict[str, float] | None) -> dict[int, float] | None:
    if not raw:
        return None
    try:
        bias: dict[int, float] | None = {int(token): value for token, value in raw.items()}
    except ValueError:
        bias = None
    if bias is None or any(token < 0 for token in bias):
        raise InvalidRequestError(
            "logit_bias keys must be token ids (non-negative integers as strings)",
            param="logit_bias",
        )
    return bias  # ids past the vocabulary: the engine knows its size and refuses them


def _job(
    rt: Runtime,
    body: BestOfKFields,
    request_id: str,
    prompt: Prompt,
    top_logprobs: int | None,
    json_schema: dict[str, Any] | None,
    arrived: float,
    chat_template_kwargs: dict[str, Any] | None = None,
    tool_choice: str | dict[str, Any] | None = None,
) -> RerankJob:
    sampling = body.sampling_fields() | {
        "logit_bias": _logit_bias(body.logit_bias),
        "top_logprobs": top_logprobs,
        "json_schema": json_schema,
    }
    return rt.jobs.build(
        request_id,
        JobRequest(
            prompt=prompt,
            model=body.model,
            n=body.n,
            sampling=sampling,
            **body.job_fields(),
            chat_template_kwargs=chat_template_kwargs,
            tool_choice=tool_choice,
            arrived=arrived,
        ),
    )


def _response_schema(body: ChatCompletionRequest) -> dict[str, Any] | None:
    fmt = body.response_format
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return {"type": "object"}
    assert fmt.json_schema is not None
    return fmt.json_schema.schema_


@router.post("/chat/completions", response_model=None)
async def chat_completions(
    body: ChatCompletionRequest, request: Request
) -> JSONResponse | StreamingResponse:
    """Chat completion: the best of K candidates, rendered as a standard ChatCompletion."""
    arrived = time.perf_counter()
    rt = runtime(request)
    top = body.top_logprobs or 0 if body.logprobs else None
    job = _job(
        rt,
        body,
        new_request_id("chatcmpl"),
        Prompt(
            messages=[m.model_dump(exclude_none=True) for m in body.messages],
            tools=body.tool_dicts,
        ),
        top,
        _response_schema(body),
        arrived,
        body.chat_template_kwargs,
        body.tool_choice_value,
    )
    renderer = ChatRenderer(body)
    return await respond(rt, [job], body, renderer, request)


@router.post("/completions", response_model=None)
async def completions(
    body: CompletionRequest, request: Request
) -> JSONResponse | StreamingResponse:
    """Text completion: the best of K candidates, rendered as a standard Completion.

    A list of prompts is one best-of-K job per prompt, run concurrently under one admission;
    as in vLLM, prompt ``p``'s ``i``-th choice has index ``p * n + i`` and usage is summed."""
    arrived = time.perf_counter()
    rt = runtime(request)
    prompts = body.prompts
    limit = rt.settings.limits.max_prompts
    if len(prompts) > limit:
        raise InvalidRequestError(
            f"{len(prompts)} prompts exceed the limit of {limit} per request; "
            "split the batch over several requests",
            param="prompt",
        )
    request_id = new_request_id("cmpl")
    # One engine request per prompt, so each needs an id of its own (vLLM's "{id}-{i}").
    ids = [request_id] if len(prompts) == 1 else [f"{request_id}-{i}" for i in range(len(prompts))]
    jobs = [
        _job(rt, body, job_id, Prompt(text=text), body.logprobs, None, arrived)
        for job_id, text in zip(ids, prompts, strict=True)
    ]
    renderer = CompletionRenderer(body)
    return await respond(rt, jobs, body, renderer, request, request_id)
