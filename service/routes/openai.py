"""The OpenAI-compatible API: ``/v1/chat/completions`` and ``/v1/completions``.

Same pipeline as the native API; only parsing and rendering differ. ``best_of`` is K, ``n`` the
number of distinct top candidates returned; the native response rides along as ``bestofk``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from bestofk.service.engines.base import Prompt, TokenLogprob
from bestofk.service.errors import BestOfKError, InvalidRequestError
from bestofk.service.jobs import JobRequest, new_request_id
from bestofk.service.pipeline import RerankJob, RerankResult
from bestofk.service.routes.common import render, runtime, trace_link
from bestofk.service.runtime import Runtime
from bestofk.service.schemas.openai import BestOfKFields, ChatCompletionRequest, CompletionRequest
from bestofk.service.selection import Scored
from bestofk.verifiers.base import VerifierSpec
from bestofk.verifiers.registry import parse_spec

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
    prefix: str,
    prompt: Prompt,
    top_logprobs: int | None,
    json_schema: dict[str, Any] | None,
    arrived: float,
    chat_template_kwargs: dict[str, Any] | None = None,
) -> RerankJob:
    specs: list[VerifierSpec] = list(body.verifiers or ())
    if json_schema is not None:
        # The constraint is enforced twice: decoding where the engine can, and a required
        # verifier that holds whatever the engine did.
        specs.append(parse_spec({"type": "json_schema", "schema": json_schema, "required": True}))
    sampling = body.sampling_fields() | {
        "logit_bias": _logit_bias(body.logit_bias),
        "top_logprobs": top_logprobs,
        "json_schema": json_schema,
    }
    return rt.jobs.build(
        new_request_id(prefix),
        JobRequest(
            prompt=prompt,
            model=body.model,
            k=body.best_of,
            n=body.n,
            sampling=sampling,
            verifiers=specs,
            profile=body.profile,
            selection=body.selection.model_dump(exclude_unset=True) if body.selection else None,
            early_exit_min_score=body.early_exit.min_score if body.early_exit else None,
            chat_template_kwargs=chat_template_kwargs,
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
        "chatcmpl",
        Prompt(messages=[m.model_dump(exclude_none=True) for m in body.messages]),
        top,
        _response_schema(body),
        arrived,
        body.chat_template_kwargs,
    )
    renderer = _ChatRenderer(body)
    return await _respond(rt, job, body, renderer, request)


@router.post("/completions", response_model=None)
async def completions(
    body: CompletionRequest, request: Request
) -> JSONResponse | StreamingResponse:
    """Text completion: the best of K candidates, rendered as a standard Completion."""
    arrived = time.perf_counter()
    rt = runtime(request)
    job = _job(rt, body, "cmpl", Prompt(text=body.prompt_text), body.logprobs, None, arrived)
    return await _respond(rt, job, body, _CompletionRenderer(body), request)


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

    def choice(self, position: int, scored: Scored) -> dict[str, Any]:
        candidate = scored.candidate
        # As vLLM's ChatMessage: ``reasoning`` always there (null without a parser); with one,
        # the answer as content (null when the thinking never ended), the thinking apart.
        message: dict[str, Any] = {"role": "assistant", "content": candidate.text}
        message["reasoning"] = self._reasoning(candidate.reasoning)
        if candidate.output is not None:
            message["content"] = candidate.text or None
        return {
            "index": position,
            "message": message,
            "finish_reason": candidate.finish_reason or "stop",
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

    def _logprobs(self, tokens: Sequence[TokenLogprob]) -> dict[str, Any] | None:
        if not self.want_logprobs:
            return None
        return {"content": [_chat_token(t) for t in tokens]}

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
            "finish_reason": scored.candidate.finish_reason or "stop",
            "logprobs": None,
        }


def _chat_token(t: TokenLogprob) -> dict[str, Any]:
    def entry(token: str, logprob: float) -> dict[str, Any]:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode())}

    return {**entry(t.token, t.logprob), "top_logprobs": [entry(tok, lp) for tok, lp in t.top]}


class _CompletionRenderer(_Renderer):
    object_name = "text_completion"
    chunk_object_name = "text_completion"

    def __init__(self, body: CompletionRequest) -> None:
        super().__init__(body, body.logprobs is not None)
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
            "top_logprobs": [{t.token: t.logprob, **dict(t.top)} for t in tokens],
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
    tokens = list(scored.logprobs)
    candidate = scored.candidate
    text = candidate.output if candidate.output is not None else candidate.text
    shown = "".join(t.token for t in tokens)
    if tokens and shown != text and shown[: -len(tokens[-1].token) or None] == text:
        tokens.pop()
    return tokens


def _usage(result: RerankResult) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": result.prompt_tokens + result.completion_tokens,
    }
    if result.reasoning_parser is not None:
        # As vLLM's server reports it with a reasoning parser.
        usage["completion_tokens_details"] = {"reasoning_tokens": result.reasoning_tokens}
    return usage


def _envelope(job: RerankJob, renderer: _Renderer, model: str, chunk: bool) -> dict[str, Any]:
    return {
        "id": job.request_id,
        "object": renderer.chunk_object_name if chunk else renderer.object_name,
        "created": int(time.time()),
        "model": model,
    }


async def _respond(
    rt: Runtime, job: RerankJob, body: BestOfKFields, renderer: _Renderer, request: Request
) -> JSONResponse | StreamingResponse:
    headers = {"X-Request-Id": job.request_id, **trace_link(rt, job.request_id)}
    if body.stream:
        events = _stream(rt, job, body, renderer)
        # Admission happens before the first event: a refusal is still a status, not an event.
        await anext(events)
        return StreamingResponse(
            events,
            media_type="text/event-stream",
            headers={**headers, "Cache-Control": "no-cache"},
        )
    result = await rt.execute(job, request, openai=True)
    out = _envelope(job, renderer, result.model, chunk=False)
    out["choices"] = [renderer.choice(i, s) for i, s in enumerate(result.top(body.n))]
    out["usage"] = _usage(result)
    out["bestofk"] = render(result, body.return_candidates).model_dump()
    return JSONResponse(out, headers=headers)


def _sse(payload: dict[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


async def _stream(
    rt: Runtime, job: RerankJob, body: BestOfKFields, renderer: _Renderer
) -> AsyncIterator[bytes]:
    """SSE: comments while verifying, then the chosen completion as chunks, usage, [DONE].

    The first event is yielded only once the job is admitted; until then errors raise."""
    prepared = rt.pipeline.prepare(job)
    async with rt.admitted(needs_engine=job.given is None, openai=True):
        # Admitted: the caller may start the response. Nothing goes on the wire for this (the
        # server writes no empty chunk); a comment here would reach clients glued to the first
        # event by parsers that strip each read, vLLM's serving benchmark among them.
        yield b""
        # Starlette cancels this generator when the client goes, which cancels the work.
        work = asyncio.ensure_future(rt.run(job, prepared=prepared))
        try:
            while not work.done():
                done, _ = await asyncio.wait({work}, timeout=KEEPALIVE_S)
                if not done:
                    # Comments keep proxies and clients from timing out; SSE parsers skip them.
                    yield b": verifying candidates\n\n"
            result = work.result()
        except BestOfKError as exc:
            # The status line has gone out already; the error travels as an SSE event.
            yield _sse(exc.body())
            yield _sse("[DONE]")
            return
        finally:
            if not work.done():
                work.cancel()
                with contextlib.suppress(BaseException):
                    await work
    base = _envelope(job, renderer, result.model, chunk=True)
    top = result.top(body.n)
    for position, scored in enumerate(top):
        for i, (field, piece, tokens) in enumerate(renderer.pieces(scored)):
            delta = renderer.delta(position, piece, i == 0, tokens, field)
            yield _sse({**base, "choices": [delta]})
        last = {**base, "choices": [renderer.finish(position, scored)]}
        if position == len(top) - 1:
            last["bestofk"] = render(result, body.return_candidates).model_dump()
        yield _sse(last)
    if body.stream_options is not None and body.stream_options.include_usage:
        yield _sse({**base, "choices": [], "usage": _usage(result)})
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
