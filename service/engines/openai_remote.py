"""Remote OpenAI-compatible backends (``vllm serve``, SGLang, llama.cpp server…) over httpx.

All K candidates of a request go to one backend, in one streamed ``n=K`` call, so the backend
prefills the prompt once. A backend that refuses ``n`` gets K concurrent ``n=1`` calls instead
(remembered per backend). Several backends are health-checked in the background and each
request goes to the healthy one with the fewest requests in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from service.engines.base import STREAM_INTERVAL, Prompt, Sample, SamplingConfig, TokenLogprob
from service.errors import (
    BackendError,
    BestOfKError,
    DeadlineExceededError,
    EngineNotReadyError,
    InvalidRequestError,
)

log = logging.getLogger(__name__)

_SSE_EOL = re.compile(r"\r\n|\r|\n")
DRAIN_S = 1.0
"""How long to wait for a backend to end its body after ``[DONE]`` before dropping it."""
KEEPALIVE_S = 2.0
"""Idle pooled connections are dropped after this. vLLM's server (uvicorn) closes them after
5 s; a request sent on one as it closes fails with a transport error."""


@dataclass(frozen=True, slots=True)
class RemoteOptions:
    """Where the backends are and how to talk to them."""

    urls: Sequence[str]
    model: str | None = None
    """Model name to send; None takes the first one the backend lists."""
    served_model_name: str | None = None
    """The name clients use; None: the model name sent."""
    api_key: str | None = None
    supports_n: bool | None = None
    """None: try ``n=K`` and fall back on refusal; False: always K calls of ``n=1``."""
    health_interval_s: float = 5.0
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 600.0


@dataclass(slots=True)
class Backend:
    """One base URL and what we know of it."""

    url: str
    healthy: bool = False
    in_flight: int = 0
    supports_n: bool | None = None
    models: list[str] = field(default_factory=list)
    vllm: bool = False
    """Its ``/v1/models`` says ``owned_by: vllm``: it takes vLLM's request extensions."""


def _normalise(url: str) -> str:
    url = url.rstrip("/")
    return url.removesuffix("/v1")


@dataclass(slots=True)
class _Choice:
    text: list[str] = field(default_factory=list)
    tokens: int = 0
    logprob: float = 0.0
    has_logprobs: bool = False
    logprobs: list[TokenLogprob] = field(default_factory=list)


class RemoteStream:
    """K candidates from one backend, in the order they finish."""

    def __init__(
        self,
        engine: OpenAIEngine,
        prompt: Prompt,
        k: int,
        sampling: SamplingConfig,
        request_id: str,
    ) -> None:
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self._gen = self._run(engine, prompt, k, sampling, request_id)

    def __aiter__(self) -> AsyncIterator[Sample]:
        return self._gen

    async def aclose(self) -> None:
        """Closing the HTTP stream makes the backend abort the unfinished candidates."""
        await self._gen.aclose()

    async def _run(
        self,
        engine: OpenAIEngine,
        prompt: Prompt,
        k: int,
        sampling: SamplingConfig,
        request_id: str,
    ) -> AsyncGenerator[Sample, None]:
        backend = engine.pick()
        backend.in_flight += 1
        try:
            if backend.supports_n is not False and k > 1:
                try:
                    async for sample in self._call(engine, backend, prompt, k, 0, sampling):
                        yield sample
                    backend.supports_n = True
                    return
                except _NRefusedError:
                    log.warning("backend %s refuses n>1; using %d calls of n=1", backend.url, k)
                    backend.supports_n = False
            async for sample in self._fan_out(engine, backend, prompt, k, sampling):
                yield sample
        finally:
            backend.in_flight -= 1

    async def _fan_out(
        self,
        engine: OpenAIEngine,
        backend: Backend,
        prompt: Prompt,
        k: int,
        sampling: SamplingConfig,
    ) -> AsyncIterator[Sample]:
        queue: asyncio.Queue[Sample | BaseException] = asyncio.Queue()

        async def one(index: int) -> None:
            try:
                async for sample in self._call(engine, backend, prompt, 1, index, sampling):
                    await queue.put(sample)
            except BaseException as exc:
                await queue.put(exc)
                raise

        tasks = [asyncio.create_task(one(i)) for i in range(k)]
        try:
            for _ in range(k):
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _call(
        self,
        engine: OpenAIEngine,
        backend: Backend,
        prompt: Prompt,
        n: int,
        index_offset: int,
        sampling: SamplingConfig,
    ) -> AsyncIterator[Sample]:
        chat = prompt.messages is not None
        path, body = _request_body(engine.model_for(backend), prompt, n, sampling, backend.vllm)
        choices: dict[int, _Choice] = {}
        finished = 0
        started = False
        try:
            async with engine.client.stream(
                "POST", backend.url + path, json=body, headers=engine.headers
            ) as response:
                started = True
                if response.status_code >= 400:
                    await _raise_for_status(response, n)
                async with contextlib.aclosing(_sse_lines(response)) as lines:
                    async for line in lines:
                        if not line.startswith("data:"):
                            continue
                        data = line[5:].strip()
                        if data == "[DONE]":
                            break
                        for sample in self._consume_checked(data, choices, chat, n, backend):
                            finished += 1
                            yield Sample(
                                index=sample.index + index_offset,
                                text=sample.text,
                                finish_reason=sample.finish_reason,
                                tokens=sample.tokens,
                                cumulative_logprob=sample.cumulative_logprob,
                                logprobs=sample.logprobs,
                            )
                    await _drain(lines)
        except httpx.TimeoutException as exc:
            raise DeadlineExceededError(f"backend {backend.url} timed out: {exc!r}") from exc
        except httpx.TransportError as exc:
            backend.healthy = False  # the health loop brings it back once it answers again
            what = "broke mid-stream" if started else "is unreachable"
            raise BackendError(f"backend {backend.url} {what}: {exc!r}") from exc
        if finished < n:
            # Without this a stream that ends early would leave nothing to choose from.
            raise BackendError(
                f"backend {backend.url} ended the stream with {finished} of {n} candidates done"
            )

    def _consume_checked(
        self, data: str, choices: dict[int, _Choice], chat: bool, n: int, backend: Backend
    ) -> list[Sample]:
        """The candidates a stream line finishes; BackendError for a line we cannot read."""
        try:
            samples = self._consume(_parse_chunk(data), choices, chat)
            if any(not 0 <= s.index < n for s in samples):
                raise ValueError(f"choice index out of range for n={n}")
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            # Not JSON, or JSON of the wrong shape: the backend does not speak the protocol,
            # so later requests should go elsewhere until a health check passes again.
            backend.healthy = False
            raise BackendError(
                f"backend {backend.url} sent a malformed stream chunk "
                f"({type(exc).__name__}: {exc}): {data[:200]!r}"
            ) from None
        return samples

    def _consume(
        self, chunk: dict[str, Any], choices: dict[int, _Choice], chat: bool
    ) -> list[Sample]:
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.prompt_tokens = int(usage.get("prompt_tokens") or self.prompt_tokens)
        finished: list[Sample] = []
        for raw in chunk.get("choices") or ():
            index = int(raw.get("index", 0))
            acc = choices.setdefault(index, _Choice())
            text = (raw.get("delta") or {}).get("content") if chat else raw.get("text")
            if text:
                acc.text.append(text)
            new_tokens = _add_logprobs(acc, raw.get("logprobs"), chat)
            if not new_tokens and isinstance(ids := raw.get("token_ids"), list):
                # No logprobs asked for: vLLM's token ids (``return_token_ids``) count instead.
                new_tokens = len(ids)
                acc.tokens += new_tokens
            self.completion_tokens += new_tokens
            if raw.get("finish_reason") is not None:
                finished.append(
                    Sample(
                        index=index,
                        text="".join(acc.text),
                        finish_reason=raw["finish_reason"],
                        tokens=acc.tokens,
                        cumulative_logprob=acc.logprob if acc.has_logprobs else None,
                        logprobs=acc.logprobs,
                    )
                )
        return finished


class _NRefusedError(Exception):
    """The backend answered 400 to ``n > 1``."""


def _request_body(
    model: str, prompt: Prompt, n: int, sampling: SamplingConfig, vllm: bool = False
) -> tuple[str, dict[str, Any]]:
    body: dict[str, Any] = {
        "model": model,
        "n": n,
        "stream": True,
        # continuous_usage_stats (a vLLM extension, ignored elsewhere) reports prompt tokens
        # in every chunk, so they are known even when early exit cuts the stream.
        "stream_options": {"include_usage": True, "continuous_usage_stats": True},
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "max_tokens": sampling.max_tokens,
        "presence_penalty": sampling.presence_penalty,
        "frequency_penalty": sampling.frequency_penalty,
    }
    # vLLM's extensions, sent only when set: a stricter server could refuse them.
    extensions = {
        "min_tokens": (sampling.min_tokens, 0),
        "top_k": (sampling.top_k, 0),
        "min_p": (sampling.min_p, 0.0),
        "repetition_penalty": (sampling.repetition_penalty, 1.0),
    }
    body.update({name: value for name, (value, off) in extensions.items() if value != off})
    if vllm:
        # Only to vLLM: a stricter server could refuse the unknown fields.
        body["stream_interval"] = STREAM_INTERVAL
        if not sampling.wants_logprobs:
            body["return_token_ids"] = True  # each candidate's token count, without logprobs
    if sampling.stop:
        body["stop"] = list(sampling.stop)
    if sampling.seed is not None:
        body["seed"] = sampling.seed
    if sampling.logit_bias:
        body["logit_bias"] = {str(k): v for k, v in sampling.logit_bias.items()}
    if sampling.json_schema is not None:
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "response", "schema": dict(sampling.json_schema)},
        }
    top = sampling.top_logprobs or 0
    if prompt.messages is not None:
        body["messages"] = [dict(m) for m in prompt.messages]
        if sampling.wants_logprobs:
            body["logprobs"] = True
            body["top_logprobs"] = top
        return "/v1/chat/completions", body
    body["prompt"] = prompt.text
    if sampling.wants_logprobs:
        body["logprobs"] = top
    return "/v1/completions", body


async def _drain(lines: AsyncIterator[str]) -> None:
    """Read what follows ``[DONE]`` (the end of the chunked body), briefly.

    A response closed before its body ends takes its connection with it: every request then
    opened a new TCP connection to the backend, a cost on both sides (about 2 ms a request on
    the CPU build). Read to the end and httpx pools the connection for the next request."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(DRAIN_S):
            async for _ in lines:
                pass


async def _sse_lines(response: httpx.Response) -> AsyncGenerator[str, None]:
    """The event stream's lines, split only where SSE ends a line (CRLF, LF or CR).

    httpx's ``aiter_lines`` splits like ``str.splitlines``: also at U+2028, U+0085 and other
    separators that JSON leaves unescaped inside strings, so a candidate containing one cut its
    chunk in two (a "malformed chunk", and the backend marked unhealthy).
    """
    pending = ""
    async for text in response.aiter_text():
        lines = _SSE_EOL.split(pending + text)
        pending = lines.pop()  # no terminator yet: the rest of it is in the next read
        for line in lines:
            yield line
    if pending:
        yield pending


def _parse_chunk(data: str) -> dict[str, Any]:
    """One stream line's JSON object; ValueError if it is none, BackendError for an error
    event (about this request: the backend itself may be fine)."""
    chunk = json.loads(data)
    if not isinstance(chunk, dict):
        raise ValueError("a stream chunk must be a JSON object")
    if "error" in chunk:
        error = chunk["error"]
        # vLLM validates some fields (logit_bias against the vocabulary) only once the
        # stream has begun: a refusal of the request, sent as an event after the 200.
        if isinstance(error, dict) and str(error.get("code")) in ("400", "422"):
            param = error.get("param")
            raise InvalidRequestError(
                f"the backend rejected the request: {error.get('message')}",
                param=param if isinstance(param, str) else None,
            )
        raise BackendError(f"backend error mid-stream: {error}")
    return chunk


def _add_logprobs(acc: _Choice, raw: Any, chat: bool) -> int:
    """Accumulate one chunk's logprobs; returns how many tokens it carried."""
    if not isinstance(raw, dict):
        return 0
    if chat:
        entries = raw.get("content") or []
        pairs = [(e.get("token", ""), e.get("logprob"), e.get("top_logprobs")) for e in entries]
        tops = [[(t.get("token", ""), t.get("logprob")) for t in (p[2] or [])] for p in pairs]
    else:
        tokens = raw.get("tokens") or []
        lps = raw.get("token_logprobs") or []
        top_dicts = raw.get("top_logprobs") or [None] * len(tokens)
        pairs = list(zip(tokens, lps, top_dicts, strict=False))
        tops = [list((d or {}).items()) for d in top_dicts]
    for (token, logprob, _), top in zip(pairs, tops, strict=False):
        acc.tokens += 1
        if logprob is None:
            continue
        acc.has_logprobs = True
        acc.logprob += float(logprob)
        acc.logprobs.append(
            TokenLogprob(token, float(logprob), tuple((t, float(v)) for t, v in top if t != token))
        )
    return len(pairs)


async def _raise_for_status(response: httpx.Response, n: int) -> None:
    raw = (await response.aread()).decode("utf-8", "replace")
    param = None
    try:
        error = json.loads(raw)["error"]
        message, param = error["message"], error.get("param")
    except (ValueError, KeyError, TypeError, AttributeError):
        message = raw[:500]
    status = response.status_code
    if status == 400 and n > 1 and "n" in str(message).lower().split("'"):
        raise _NRefusedError(message)
    if status in (400, 422):
        raise InvalidRequestError(
            f"the backend rejected the request: {message}",
            param=param if isinstance(param, str) else None,
        )
    raise BackendError(f"backend answered {status}: {message}")


class OpenAIEngine:
    """Routes each request to the least busy healthy backend."""

    def __init__(self, options: RemoteOptions) -> None:
        if not options.urls:
            raise ValueError("the openai engine needs at least one backend URL")
        self.options = options
        self.backends = [
            Backend(_normalise(u), supports_n=options.supports_n) for u in options.urls
        ]
        self.headers = {"Authorization": f"Bearer {options.api_key}"} if options.api_key else {}
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(options.read_timeout_s, connect=options.connect_timeout_s),
            limits=httpx.Limits(
                max_connections=None, max_keepalive_connections=64, keepalive_expiry=KEEPALIVE_S
            ),
        )
        self._health_task: asyncio.Task[None] | None = None

    @property
    def model_name(self) -> str:
        """The served name, else the configured model, else the first one a backend lists."""
        if self.options.served_model_name:
            return self.options.served_model_name
        if self.options.model:
            return self.options.model
        for backend in self.backends:
            if backend.models:
                return backend.models[0]
        return "unknown"

    @property
    def ready(self) -> bool:
        """True while at least one backend is healthy."""
        return any(b.healthy for b in self.backends)

    def model_for(self, backend: Backend) -> str:
        """The model name to send to ``backend``."""
        return self.options.model or (backend.models[0] if backend.models else "unknown")

    async def start(self) -> None:
        """Check every backend once, then keep checking in the background."""
        await self.check_health()
        self._health_task = asyncio.create_task(self._health_loop())

    async def close(self) -> None:
        """Stop health checks and close connections."""
        if self._health_task is not None:
            self._health_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health_task
        await self.client.aclose()

    async def check_health(self) -> None:
        """Probe ``/v1/models`` on every backend (it also tells the served model names)."""
        await asyncio.gather(*(self._probe(b) for b in self.backends))

    async def _probe(self, backend: Backend) -> None:
        try:
            response = await self.client.get(
                backend.url + "/v1/models", headers=self.headers, timeout=5.0
            )
            response.raise_for_status()
            listed = response.json().get("data", [])
            backend.models = [m["id"] for m in listed]
            backend.vllm = any(m.get("owned_by") == "vllm" for m in listed)
            backend.healthy = True
        except (httpx.HTTPError, ValueError, KeyError, TypeError, AttributeError) as exc:
            if backend.healthy:
                log.warning("backend %s is unhealthy: %r", backend.url, exc)
            backend.healthy = False

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.options.health_interval_s)
            await self.check_health()

    def pick(self) -> Backend:
        """The healthy backend with the fewest requests in flight."""
        healthy = [b for b in self.backends if b.healthy]
        if not healthy:
            raise EngineNotReadyError(
                "no healthy backend", retry_after_s=self.options.health_interval_s
            )
        return min(healthy, key=lambda b: b.in_flight)

    def sample(
        self, prompt: Prompt, k: int, sampling: SamplingConfig, request_id: str
    ) -> RemoteStream:
        """Start K candidates on one backend."""
        return RemoteStream(self, prompt, k, sampling, request_id)


__all__ = ["BestOfKError", "OpenAIEngine", "RemoteOptions"]
