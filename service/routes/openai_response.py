"""An OpenAI response, whole or streamed: the jobs run, and each one's chosen candidates, as an
endpoint's renderer (:mod:`.openai_choices`) shapes them, go out in one JSON body or as SSE
chunks, with the usage and the native response as ``bestofk``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from bestofk.service.errors import BestOfKError
from bestofk.service.rerank import RerankJob, RerankResult
from bestofk.service.results import as_data
from bestofk.service.routes.common import client_gone, trace_link
from bestofk.service.routes.openai_choices import ChatRenderer, Renderer
from bestofk.service.runtime import Runtime
from bestofk.service.schemas.openai import BestOfKFields

KEEPALIVE_S = 1.0
"""How often a streaming response sends an SSE comment while candidates are verified."""


def _usage(results: Sequence[RerankResult]) -> dict[str, Any]:
    prompt = sum(r.prompt_tokens for r in results)
    completion = sum(r.completion_tokens for r in results)
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if any(r.reasoning_parser is not None for r in results):
        # As vLLM's server reports it with a reasoning parser.
        reasoning = sum(r.reasoning_tokens for r in results)
        usage["completion_tokens_details"] = {"reasoning_tokens": reasoning}
    return usage


def _envelope(request_id: str, renderer: Renderer, model: str, chunk: bool) -> dict[str, Any]:
    return {
        "id": request_id,
        "object": renderer.chunk_object_name if chunk else renderer.object_name,
        "created": int(time.time()),
        "model": model,
    }


async def respond(
    rt: Runtime,
    jobs: list[RerankJob],
    body: BestOfKFields,
    renderer: Renderer,
    request: Request,
    request_id: str | None = None,
) -> JSONResponse | StreamingResponse:
    """One job per prompt (chat has one); ``request_id`` is the response's id where it is not
    the one job's."""
    request_id = request_id or jobs[0].request_id
    headers = {"X-Request-Id": request_id, **trace_link(rt, request_id)}
    if body.stream:
        events = _stream(rt, jobs, body, renderer, request_id)
        # Admission happens before the first event: a refusal is still a status, not an event.
        await anext(events)
        return StreamingResponse(
            events,
            media_type="text/event-stream",
            headers={**headers, "Cache-Control": "no-cache"},
        )
    results = await rt.execute_batch(jobs, client_gone(request), openai=True)
    out = _envelope(request_id, renderer, results[0].model, chunk=False)
    out["choices"] = [
        renderer.choice(p * body.n + i, s)
        for p, result in enumerate(results)
        for i, s in enumerate(result.top(body.n))
    ]
    out["usage"] = _usage(results)
    natives = [as_data(r, candidates=body.return_candidates) for r in results]
    # One prompt: its native response; a batch: one per prompt, in prompt order.
    out["bestofk"] = natives[0] if len(natives) == 1 else natives
    return JSONResponse(out, headers=headers)


def _sse(payload: dict[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


async def _stream(
    rt: Runtime,
    jobs: list[RerankJob],
    body: BestOfKFields,
    renderer: Renderer,
    request_id: str,
) -> AsyncIterator[bytes]:
    """SSE: comments while verifying, then each prompt's chosen completions as chunks (as its
    job finishes, so a batch's prompts interleave by completion, as in vLLM), usage, [DONE].

    The first event is yielded only once the jobs are admitted; until then errors raise."""
    prepared = [rt.pipeline.prepare(job) for job in jobs]
    results: list[RerankResult] = []
    needs_engine = any(job.given is None for job in jobs)
    async with rt.admitted(needs_engine=needs_engine, openai=True):
        # Admitted: the caller may start the response. Nothing goes on the wire for this (the
        # server writes no empty chunk); a comment here would reach clients glued to the first
        # event by parsers that strip each read, vLLM's serving benchmark among them.
        yield b""
        # Starlette cancels this generator when the client goes, which cancels the work.
        works = {
            asyncio.ensure_future(rt.run(job, prepared=run)): p
            for p, (job, run) in enumerate(zip(jobs, prepared, strict=True))
        }
        pending = set(works)
        try:
            while pending:
                done, pending = await asyncio.wait(
                    pending, timeout=KEEPALIVE_S, return_when=asyncio.FIRST_COMPLETED
                )
                if not done:
                    # Comments keep proxies and clients from timing out; SSE parsers skip them.
                    yield b": verifying candidates\n\n"
                for work in sorted(done, key=works.__getitem__):
                    result = work.result()
                    results.append(result)
                    for chunk in _chunks(request_id, works[work], result, body, renderer):
                        yield _sse(chunk)
        except BestOfKError as exc:
            # The status line has gone out already; the error travels as an SSE event.
            yield _sse(exc.body())
            yield _sse("[DONE]")
            return
        finally:
            for work in pending:
                work.cancel()
                with contextlib.suppress(BaseException):
                    await work
    if body.stream_options is not None and body.stream_options.include_usage:
        base = _envelope(request_id, renderer, results[0].model, chunk=True)
        yield _sse({**base, "choices": [], "usage": _usage(results)})
    yield _sse("[DONE]")


def _chunks(
    request_id: str,
    prompt_index: int,
    result: RerankResult,
    body: BestOfKFields,
    renderer: Renderer,
) -> Iterator[dict[str, Any]]:
    """One prompt's chosen completions as stream chunks; the last carries its ``bestofk``."""
    base = _envelope(request_id, renderer, result.model, chunk=True)
    top = result.top(body.n)
    for position, scored in enumerate(top, start=prompt_index * body.n):
        if isinstance(renderer, ChatRenderer) and renderer.calls(scored):
            # The thinking (if shown), the text around the calls (if any), then the calls.
            thought = [p for p in renderer.pieces(scored) if p[0] == "reasoning"]
            for i, (field, piece, tokens) in enumerate(thought):
                yield {**base, "choices": [renderer.delta(position, piece, i == 0, tokens, field)]}
            content = scored.candidate.calls.content if scored.candidate.calls else None
            first = not thought
            yield {**base, "choices": [renderer.delta(position, content or "", first, [])]}
            for choice in renderer.tool_call_deltas(position, scored):
                yield {**base, "choices": [choice]}
        else:
            for i, (field, piece, tokens) in enumerate(renderer.pieces(scored)):
                delta = renderer.delta(position, piece, i == 0, tokens, field)
                yield {**base, "choices": [delta]}
        last = {**base, "choices": [renderer.finish(position, scored)]}
        if position == prompt_index * body.n + len(top) - 1:
            last["bestofk"] = as_data(result, candidates=body.return_candidates)
        yield last
