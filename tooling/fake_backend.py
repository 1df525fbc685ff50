"""A misbehaving OpenAI-compatible backend, run as a real HTTP server on loopback.

The fault tests put it behind bestofk's ``openai`` engine. Its mode says how it misbehaves and
can be changed while it runs (``POST /control {"mode": ...}``), so one process serves a whole
test module:

    ok             streams every candidate to the end (text "42"), like ``vllm serve``
    down           503 on every route, /v1/models included (a backend still loading)
    die            sends the first token of each candidate, then the process exits at once
    slow           the stream stays open, usage-only chunks trickle, no token ever comes (a
                   backend busy with other work; candidates that never finish)
    slow_tail      candidate 0 finishes at once, the others never do
    garbage        200 with stream lines that are not JSON
    garbage_shape  200 with JSON chunks of the wrong shape
    empty          200 and ``[DONE]`` without a single candidate
    error_status   500 with an error body
    refuse_n       400 naming 'n' when n > 1, as backends without ``n`` support do; n = 1 is ok
    wedge          200 and then nothing, ever: /v1/models answers, no token ever comes
    flood          candidate 0 never ends and streams 16 KB deltas as fast as it can (max_tokens
                   ignored); the others finish at once
    think          a reasoning model behind vLLM's ``--reasoning-parser``: each chat candidate
                   streams its thinking as ``delta.reasoning`` ("6*7 is 42"), then "42"
    think_legacy   the same, in the older field ``delta.reasoning_content``
    think_inline   a reasoning model served without a parser: "<think>6*7 is 42</think>42" as
                   content (and as text on /v1/completions, in every ``think`` mode)
    think_cut      thinking only (``delta.reasoning``), then finish_reason "length": cut by
                   ``max_tokens``
    script         candidate i is ``texts[i % len(texts)]`` (``POST /control {"mode": "script",
                   "texts": [...]}``), each in one delta: recorded model outputs, tool calls

Like vLLM, a chunk carries each token's logprobs only when the request asks for them
(``logprobs``), and its token ids when it sets ``return_token_ids``.

``GET /control`` reports what it has seen: every completion request's ``n``, ``stream``, client
port (one per TCP connection), ``messages`` and tool fields (``tools``, ``tool_choice``,
``skip_special_tokens``) when sent, and how many streams the client closed before they ended
(generation aborted).

    python -m bestofk.tooling.fake_backend --port 8001 --mode ok
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

MODEL = "demo"
ANSWER = ("4", "2")
"""The tokens every finished candidate is made of."""
TRICKLE_S = 0.2
MODES = (
    "ok", "down", "die", "slow", "slow_tail", "garbage", "garbage_shape", "empty",
    "error_status", "refuse_n", "wedge", "flood", "think", "think_legacy", "think_inline",
    "think_cut", "script",
)  # fmt: skip
THOUGHT = ("6*7", " is 42")
"""What every candidate thinks in the ``think`` modes, before its answer."""
THINK_START, THINK_END = "<think>", "</think>"
FLOOD_DELTA = "x" * 16_384


class State:
    """The mode and what the backend has seen."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.requests: list[dict[str, Any]] = []
        self.aborted = 0
        self.texts: list[str] = ["42"]
        """What ``script`` mode answers."""

    def report(self) -> dict[str, Any]:
        """The mode, the completion requests seen, and the streams the client cut short."""
        return {"mode": self.mode, "requests": self.requests, "aborted": self.aborted}


def _sse(payload: dict[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload)
    return f"data: {data}\n\n".encode()


@dataclass(frozen=True, slots=True)
class Wire:
    """What a request asked to get back with each token, as vLLM reads it: logprobs only when
    asked for (``logprobs``), token ids when ``return_token_ids`` is set."""

    logprobs: bool = False
    token_ids: bool = False

    @classmethod
    def of(cls, body: dict[str, Any]) -> Wire:
        """The request body's wishes."""
        logprobs = body.get("logprobs")
        return cls(logprobs not in (None, False), bool(body.get("return_token_ids")))


def _choice(wire: Wire, chat: bool, index: int, token: str, finish: str | None) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": index, "finish_reason": finish}
    if chat:
        choice["delta"] = {"content": token}
        if wire.logprobs:
            choice["logprobs"] = {
                "content": [{"token": token, "logprob": -0.1, "top_logprobs": []}]
            }
    else:
        choice["text"] = token
        if wire.logprobs:
            choice["logprobs"] = {
                "tokens": [token], "token_logprobs": [-0.1], "top_logprobs": [{token: -0.1}]
            }  # fmt: skip
    if wire.token_ids:
        choice["token_ids"] = [0]  # one token per delta
    return choice


def _thinking(wire: Wire, chat: bool, mode: str, n: int) -> list[dict[str, Any]]:
    """The chunks of the ``think`` modes: each token of every candidate, thinking first."""
    field = {"think": "reasoning", "think_cut": "reasoning"}.get(mode, "reasoning_content")
    if mode == "think_inline" or not chat:  # inline: the markers are tokens of the content
        ended = () if mode == "think_cut" else (THINK_END,)
        tokens = [("content", t) for t in (THINK_START, *THOUGHT, *ended)]
    else:
        tokens = [(field, t) for t in THOUGHT]
    if mode != "think_cut":
        tokens += [("content", t) for t in ANSWER]
    chunks = []
    for position, (where, token) in enumerate(tokens):
        last = position == len(tokens) - 1
        finish = ("length" if mode == "think_cut" else "stop") if last else None
        choices = []
        for i in range(n):
            choice = _choice(wire, chat, i, token, finish)
            if chat and where != "content":
                choice["delta"] = {where: token}
            choices.append(choice)
        chunks.append(_chunk(chat, choices, n * (position + 1)))
    return chunks


def _chunk(chat: bool, choices: list[dict[str, Any]], generated: int) -> dict[str, Any]:
    return {
        "id": "fake-1",
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": 0,
        "model": MODEL,
        "choices": choices,
        "usage": {
            "prompt_tokens": 5,
            "completion_tokens": generated,
            "total_tokens": 5 + generated,
        },
    }


def _error(status: int, message: str) -> JSONResponse:
    body = {"error": {"message": message, "type": "fake_error", "param": None, "code": status}}
    return JSONResponse(body, status_code=status)


def build_app(state: State) -> Starlette:
    """The fake's routes over ``state``."""

    async def models(request: Request) -> Response:
        if state.mode == "down":
            return _error(503, "the fake backend is down")
        # vLLM's mark: bestofk sends it vLLM's extensions (return_token_ids, stream_interval).
        model = {"id": MODEL, "object": "model", "owned_by": "vllm"}
        return JSONResponse({"object": "list", "data": [model]})

    async def control(request: Request) -> Response:
        if request.method == "POST":
            command = await request.json()
            mode = command["mode"]
            if mode not in MODES:
                return _error(400, f"unknown mode {mode!r}")
            state.mode = mode
            state.texts = list(command.get("texts") or state.texts)
        return JSONResponse(state.report())

    async def completions(request: Request) -> Response:
        body = await request.json()
        chat = request.url.path.endswith("/chat/completions")
        n = int(body.get("n") or 1)
        stream = bool(body.get("stream"))
        # The client port tells its TCP connections apart (reused or new).
        client_port = request.client.port if request.client else None
        seen = {"n": n, "stream": stream, "client_port": client_port}
        fields = ("messages", "tools", "tool_choice", "skip_special_tokens")
        state.requests.append(seen | {k: body[k] for k in fields if k in body})
        mode = state.mode
        if mode == "down":
            return _error(503, "the fake backend is down")
        if mode == "error_status":
            return _error(500, "the fake backend fell over")
        if mode == "refuse_n" and n > 1:
            return _error(400, "'n' > 1 is not supported by this backend")
        if not stream:
            return _whole(Wire.of(body), body, chat, mode)
        events = _stream(state, Wire.of(body), mode, chat, n)
        return StreamingResponse(events, media_type="text/event-stream")

    return Starlette(
        routes=[
            Route("/v1/models", models),
            Route("/control", control, methods=["GET", "POST"]),
            Route("/v1/completions", completions, methods=["POST"]),
            Route("/v1/chat/completions", completions, methods=["POST"]),
        ]
    )


def _whole(wire: Wire, body: dict[str, Any], chat: bool, mode: str) -> Response:
    """A non-streamed answer (what a judge endpoint is asked for): " yes" per prompt."""
    if mode.startswith("garbage") or mode == "die":
        return Response("<html>not an API</html>", media_type="text/html")
    prompts = body.get("prompt")
    count = len(prompts) if isinstance(prompts, list) else 1
    choices = [_choice(wire, chat, i, " yes", "length") for i in range(count)]
    return JSONResponse(_chunk(chat, choices, count))


async def _stream(state: State, wire: Wire, mode: str, chat: bool, n: int) -> AsyncIterator[bytes]:
    finished = False
    try:
        if mode == "garbage":
            yield b"data: <html>this is not JSON</html>\n\n"
        elif mode == "garbage_shape":
            yield _sse({"choices": "not a list of choices"})
            yield _sse({"choices": [{"index": "first", "text": 42}]})
        elif mode == "die":
            yield _sse(_chunk(chat, [_choice(wire, chat, i, ANSWER[0], None) for i in range(n)], n))
            await asyncio.sleep(0.3)  # the first bytes are on the wire: now die mid-stream
            os._exit(1)
        elif mode == "wedge":
            await asyncio.Event().wait()  # headers are out; the body never starts
        elif mode == "flood":
            if n > 1:
                done = [_choice(wire, chat, i, "".join(ANSWER), "stop") for i in range(1, n)]
                yield _sse(_chunk(chat, done, 2 * (n - 1)))
            generated = 2 * (n - 1)
            while True:  # until the client goes away
                generated += 1
                yield _sse(_chunk(chat, [_choice(wire, chat, 0, FLOOD_DELTA, None)], generated))
                await asyncio.sleep(0)
        elif mode == "script":
            texts = state.texts
            for i in range(n):
                yield _sse(
                    _chunk(chat, [_choice(wire, chat, i, texts[i % len(texts)], "stop")], i + 1)
                )
        elif mode in ("slow", "slow_tail"):
            answered = 1 if mode == "slow_tail" else 0
            if answered:
                yield _sse(_chunk(chat, [_choice(wire, chat, 0, "".join(ANSWER), "stop")], 2))
            while True:  # until the client goes away
                yield _sse(_chunk(chat, [], 2 * answered))
                await asyncio.sleep(TRICKLE_S)
        elif mode.startswith("think"):
            for chunk in _thinking(wire, chat, mode, n):
                yield _sse(chunk)
        elif mode != "empty":
            for position, token in enumerate(ANSWER):
                finish = "stop" if position == len(ANSWER) - 1 else None
                choices = [_choice(wire, chat, i, token, finish) for i in range(n)]
                yield _sse(_chunk(chat, choices, n * (position + 1)))
        yield _sse("[DONE]")
        finished = True
    finally:
        if not finished:
            state.aborted += 1


def main() -> None:
    """Serve on loopback until killed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mode", choices=MODES, default="ok")
    args = parser.parse_args()
    uvicorn.run(build_app(State(args.mode)), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
