"""The OpenAI-compatible API: ``/v1/chat/completions`` and ``/v1/completions``.

Same pipeline as the native API; only parsing and rendering differ. ``best_of`` is K, ``n`` the
number of distinct top candidates returned; the native response rides along as ``bestofk``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from bestofk.service.engines.base import Prompt
from bestofk.service.errors import BestOfKError, InvalidRequestError
from bestofk.service.jobs import JobRequest, new_request_id
from bestofk.service.rerank import RerankJob, RerankResult
from bestofk.service.results import as_data, openai_tool_calls
from bestofk.service.routes.common import client_gone, runtime, trace_link
from bestofk.service.runtime import Runtime
from bestofk.service.schemas.openai import BestOfKFields, ChatCompletionRequest, CompletionRequest
from bestofk.service.selection import Scored
from bestofk.verifiers.base import TokenLogprob, ToolCall

router = APIRouter(prefix="/v1")

KEEPALIVE_S = 1.0
"""How often a streaming response sends an SSE comment while candidates are verified."""


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
    renderer = _ChatRenderer(body)
    return await _respond(rt, [job], body, renderer, request)


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
    renderer = _CompletionRenderer(body)
    return await _respond(rt, jobs, body, renderer, request, request_id)


class _Renderer:
    """How one endpoint shapes choices, chunks and logprobs."""

    object_name = ""
    chunk_object_name = ""

    def __init__(self, body: BestOfKFields, want_logprobs: bool) -> None:
        self.body = body
        self.want_logprobs = want_logprobs

    def choice(self, position: int, scored: Scored) -> dict[str, Any]:
        raise NotImplementedError

    def pieces(self, scored: Scored) -> list[tuple[str, str, list[TokenLogprob]]]:
        """What a stream sends of one choice: (field, text, the logprobs of its tokens)."""
        return [("content", text, tokens) for text, tokens in _pieces(scored)]

    def delta(
        self,
        position: int,
        text: str,
        first: bool,
        tokens: Sequence[TokenLogprob],
        field: str = "content",
    ) -> dict[str, Any]:
        """A chunk of ``field`` (``content``, or ``reasoning`` in a chat); ``tokens`` are the
        logprobs of the tokens ``text`` shows, which travel with it as they do from vLLM (when
        the client asked for logprobs)."""
        raise NotImplementedError

    def finish(self, position: int, scored: Scored) -> dict[str, Any]:
        raise NotImplementedError


class _ChatRenderer(_Renderer):
    object_name = "chat.completion"
    chunk_object_name = "chat.completion.chunk"

    def __init__(self, body: ChatCompletionRequest) -> None:
        super().__init__(body, body.logprobs)
        self.top_n = body.top_logprobs or 0

    def choice(self, position: int, scored: Scored) -> dict[str, Any]:
        candidate = scored.candidate
        # As vLLM's ChatMessage: ``reasoning`` always there (null without a parser); with one,
        # the answer as content (null when the thinking never ended), the thinking apart.
        message: dict[str, Any] = {"role": "assistant", "content": candidate.text}
        message["reasoning"] = self._reasoning(candidate.reasoning)
        if candidate.output is not None:
            message["content"] = candidate.text or None
        finish_reason = candidate.finish_reason or "stop"
        if calls := self.calls(scored):
            message["content"] = candidate.calls.content if candidate.calls else None
            message["tool_calls"] = openai_tool_calls(calls)
            finish_reason = "tool_calls"
        return {
            "index": position,
            "message": message,
            "finish_reason": finish_reason,
            "logprobs": self._logprobs(visible_logprobs(scored)),
        }

    def _reasoning(self, reasoning: str | None) -> str | None:
        assert isinstance(self.body, ChatCompletionRequest)
        return reasoning if self.body.include_reasoning else None

    def pieces(self, scored: Scored) -> list[tuple[str, str, list[TokenLogprob]]]:
        """The reasoning first, as vLLM streams it (``delta.reasoning``), then the answer."""
        candidate = scored.candidate
        reasoning = self._reasoning(candidate.reasoning)
        if candidate.output is None:
            return super().pieces(scored)
        thought: list[tuple[str, str, list[TokenLogprob]]] = []
        if reasoning:
            thought = [("reasoning", w, []) for w in _words(reasoning)]
        tokens = _answer_logprobs(visible_logprobs(scored), candidate.text)
        if not candidate.text:
            return thought  # no answer: vLLM streams no content
        if tokens and "".join(t.token for t in tokens) == candidate.text:
            answer = [("content", t.token, [t]) for t in tokens]
        else:
            answer = [("content", w, []) for w in _words(candidate.text)]
        return [*thought, *answer]

    def calls(self, scored: Scored) -> list[ToolCall]:
        """The chosen candidate's tool calls to return: only the first unless parallel calls
        are allowed (``parallel_tool_calls``, as vLLM filters them)."""
        parsed = scored.candidate.calls
        calls = list(parsed.calls) if parsed is not None else []
        assert isinstance(self.body, ChatCompletionRequest)
        return calls[:1] if self.body.parallel_tool_calls is False else calls

    def tool_call_deltas(self, position: int, scored: Scored) -> list[dict[str, Any]]:
        """The calls as stream choices: each whole in one delta, as vLLM sends a call whose
        arguments it has complete."""
        return [
            {
                "index": position,
                "delta": {"tool_calls": [{"index": i, **call}]},
                "finish_reason": None,
                "logprobs": None,
            }
            for i, call in enumerate(openai_tool_calls(self.calls(scored)))
        ]

    def _logprobs(self, tokens: Sequence[TokenLogprob]) -> dict[str, Any] | None:
        if not self.want_logprobs:
            return None
        return {"content": [_chat_token(t, self.top_n) for t in tokens]}

    def delta(
        self,
        position: int,
        text: str,
        first: bool,
        tokens: Sequence[TokenLogprob],
        field: str = "content",
    ) -> dict[str, Any]:
        delta: dict[str, Any] = {field: text}
        if first:
            delta["role"] = "assistant"
        return {
            "index": position,
            "delta": delta,
            "finish_reason": None,
            "logprobs": self._logprobs(tokens),
        }

    def finish(self, position: int, scored: Scored) -> dict[str, Any]:
        return {
            "index": position,
            "delta": {},
            "finish_reason": "tool_calls"
            if self.calls(scored)
            else scored.candidate.finish_reason or "stop",
            "logprobs": None,
        }


def _chat_token(t: TokenLogprob, n: int) -> dict[str, Any]:
    def entry(token: str, logprob: float) -> dict[str, Any]:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode())}

    top = [entry(tok, lp) for tok, lp in client_top(t, n)]
    return {**entry(t.token, t.logprob), "top_logprobs": top}


def client_top(t: TokenLogprob, n: int) -> list[tuple[str, float]]:
    """The alternatives a client asking ``n`` top logprobs sees, as vLLM sends them: the
    ``n`` likeliest tokens but the sampled one (``n - 1`` when it is among them). The engine
    may have computed more (confidence-aware stopping wants 20)."""
    if len(t.top) <= n:  # what the engine computed is what the client asked
        return list(t.top)
    alternatives = sorted(t.top, key=lambda item: -item[1])
    sampled_among = sum(lp > t.logprob for _, lp in alternatives) < n
    return alternatives[: max(0, n - 1) if sampled_among else n]


class _CompletionRenderer(_Renderer):
    object_name = "text_completion"
    chunk_object_name = "text_completion"

    def __init__(self, body: CompletionRequest) -> None:
        super().__init__(body, body.logprobs is not None)
        self.top_n = body.logprobs or 0
        self._offsets: dict[int, int] = {}
        """Per choice: where the next streamed chunk starts in its text (``text_offset``)."""

    def choice(self, position: int, scored: Scored) -> dict[str, Any]:
        # vLLM's completions endpoint splits nothing: the text is the whole output.
        candidate = scored.candidate
        return {
            "index": position,
            "text": candidate.output if candidate.output is not None else candidate.text,
            "finish_reason": scored.candidate.finish_reason or "stop",
            "logprobs": self._logprobs(visible_logprobs(scored), 0),
        }

    def _logprobs(self, tokens: Sequence[TokenLogprob], start: int) -> dict[str, Any] | None:
        if not self.want_logprobs:
            return None
        offsets, offset = [], start
        for t in tokens:
            offsets.append(offset)
            offset += len(t.token)
        return {
            "tokens": [t.token for t in tokens],
            "token_logprobs": [t.logprob for t in tokens],
            "top_logprobs": [
                {t.token: t.logprob, **dict(client_top(t, self.top_n))} for t in tokens
            ],
            "text_offset": offsets,
        }

    def pieces(self, scored: Scored) -> list[tuple[str, str, list[TokenLogprob]]]:
        """The whole output, thinking included (vLLM's completions endpoint splits nothing)."""
        output = scored.candidate.output
        if output is None:
            return super().pieces(scored)
        tokens = visible_logprobs(scored)
        if tokens and "".join(t.token for t in tokens) == output:
            return [("content", t.token, [t]) for t in tokens]
        return [("content", w, []) for w in _words(output)]

    def delta(
        self,
        position: int,
        text: str,
        first: bool,
        tokens: Sequence[TokenLogprob],
        field: str = "content",
    ) -> dict[str, Any]:
        start = self._offsets.get(position, 0)
        self._offsets[position] = start + len(text)
        return {
            "index": position,
            "text": text,
            "finish_reason": None,
            "logprobs": self._logprobs(tokens, start),
        }

    def finish(self, position: int, scored: Scored) -> dict[str, Any]:
        return {
            "index": position,
            "text": "",
            "finish_reason": scored.candidate.finish_reason or "stop",
            "logprobs": None,
        }


def visible_logprobs(scored: Scored) -> list[TokenLogprob]:
    """The logprobs of the tokens the text shows: a trailing end-of-sequence token (which
    vLLM reports, decoded as e.g. ``</s>``) is not part of the completion's text."""
    tokens = list(scored.candidate.logprobs)
    candidate = scored.candidate
    text = candidate.output if candidate.output is not None else candidate.text
    shown = "".join(t.token for t in tokens)
    if tokens and shown != text and shown[: -len(tokens[-1].token) or None] == text:
        tokens.pop()
    return tokens


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


def _envelope(request_id: str, renderer: _Renderer, model: str, chunk: bool) -> dict[str, Any]:
    return {
        "id": request_id,
        "object": renderer.chunk_object_name if chunk else renderer.object_name,
        "created": int(time.time()),
        "model": model,
    }


async def _respond(
    rt: Runtime,
    jobs: list[RerankJob],
    body: BestOfKFields,
    renderer: _Renderer,
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
    renderer: _Renderer,
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


def _words(text: str) -> list[str]:
    """``text`` in pieces that join back to it: each word with the space after it."""
    words = text.split(" ")
    return [w + (" " if i < len(words) - 1 else "") for i, w in enumerate(words)]


def _answer_logprobs(tokens: list[TokenLogprob], answer: str) -> list[TokenLogprob]:
    """The last tokens, which spell ``answer`` after the thinking; [] when none do."""
    spelled = ""
    for start in range(len(tokens) - 1, -1, -1):
        spelled = tokens[start].token + spelled
        if len(spelled) >= len(answer):
            return tokens[start:] if spelled == answer else []
    return []


def _chunks(
    request_id: str,
    prompt_index: int,
    result: RerankResult,
    body: BestOfKFields,
    renderer: _Renderer,
) -> Iterator[dict[str, Any]]:
    """One prompt's chosen completions as stream chunks; the last carries its ``bestofk``."""
    base = _envelope(request_id, renderer, result.model, chunk=True)
    top = result.top(body.n)
    for position, scored in enumerate(top, start=prompt_index * body.n):
        if isinstance(renderer, _ChatRenderer) and renderer.calls(scored):
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


def _pieces(scored: Scored) -> list[tuple[str, list[TokenLogprob]]]:
    """The text as the tokens it was generated in, each with its logprob, when they spell it;
    else, with logprobs, the whole text in one piece carrying them all; else as words."""
    text = scored.candidate.text
    tokens = visible_logprobs(scored)
    if tokens and "".join(t.token for t in tokens) == text:
        return [(t.token, [t]) for t in tokens]
    if tokens:
        return [(text, tokens)]
    return [(w, []) for w in _words(text)]
