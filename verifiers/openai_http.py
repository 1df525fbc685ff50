"""The OpenAI wire, once: request bodies, the event stream, chunks, logprobs, error replies.

Both clients of OpenAI-compatible servers speak through this module: the remote engine
(``engines/openai_remote.py`` of the server, streamed sampling) and the model-based verifiers
(:mod:`bestofk.verifiers.endpoint` for a judge, :mod:`bestofk.verifiers.reward_model`).

It lives under ``verifiers/`` because that is the package both sides may import: the service
imports the verifiers, never the reverse. The other seam, the endpoint completer moving to the
service and reaching the verifiers as a factory in ``VerifierResources``, would leave a verifier
built without the app (the GRPO reward, tests, the bench) unable to call an endpoint, and the
reward model's ``/classify`` call would need a second factory. The module is a leaf: httpx and
JSON, no bestofk imports, and exceptions of its own that each side turns into its errors.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import Any

import httpx

KEEPALIVE_S = 2.0
"""Idle pooled connections are dropped after this. vLLM's server (uvicorn) closes them after
5 s; a request sent on one as it closes fails with a transport error."""
MAX_ERROR_CHARS = 300
COMPLETIONS_PATH = "/v1/completions"
CHAT_PATH = "/v1/chat/completions"

_SSE_EOL = re.compile(r"\r\n|\r|\n")

LogprobEntry = tuple[str, float | None, list[tuple[str, float]]]
"""A token, its logprob (None if the server sent none) and its top alternatives."""


class EndpointError(RuntimeError):
    """The endpoint answered with an error, or with something that is not the expected JSON."""


class ProtocolError(Exception):
    """A server's event stream is not the protocol (a line without end)."""


class ErrorReply(Exception):
    """An error the server sent: an error status, or an error event inside a stream."""

    def __init__(self, status: int | None, message: str, param: str | None, detail: Any) -> None:
        super().__init__(message)
        self.status = status
        """The HTTP status, or the event's ``code`` when it is a status; None otherwise."""
        self.message = message
        self.param = param
        self.detail = detail
        """The error as sent: the event's ``error`` object, or the body's text."""

    @property
    def rejected(self) -> bool:
        """Whether the server refused the request itself (400, 422): the client's error."""
        return self.status in (400, 422)


def pooled_limits() -> httpx.Limits:
    """Connection limits of a long-lived client: no cap on concurrent calls (a cap would
    queue them behind each other), idle connections closed before the server closes them."""
    return httpx.Limits(
        max_connections=None, max_keepalive_connections=64, keepalive_expiry=KEEPALIVE_S
    )


class PooledClient:
    """One ``httpx.AsyncClient`` for a process's calls to model endpoints, made on first use.

    A client per call opened a TCP connection per call; this one keeps them alive between
    calls. Each call passes its own timeout. The app closes it at shutdown.
    """

    def __init__(self) -> None:
        self._client: httpx.AsyncClient | None = None

    @property
    def client(self) -> httpx.AsyncClient:
        """The shared client, made on first use (inside the running event loop)."""
        if self._client is None:
            self._client = httpx.AsyncClient(limits=pooled_limits())
        return self._client

    async def aclose(self) -> None:
        """Close its connections; a later call makes a new client."""
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()


def base_url(url: str) -> str:
    """``http://host:port`` from any of ``…``, ``…/``, ``…/v1``."""
    return url.rstrip("/").removesuffix("/v1")


def request_body(
    model: str,
    *,
    prompt: str | Sequence[str] | None = None,
    messages: Sequence[Mapping[str, Any]] | None = None,
    n: int = 1,
    top_logprobs: int | None = None,
    stream: bool = False,
    params: Mapping[str, Any] | None = None,
) -> tuple[str, dict[str, Any]]:
    """The path and body of a completion call: chat for ``messages``, else raw ``prompt`` (a
    list of prompts batches them). ``top_logprobs``: None asks for no logprobs; else the
    sampled tokens' logprobs and this many alternatives, in the API's own shape."""
    body: dict[str, Any] = {"model": model, "n": n}
    if stream:
        body["stream"] = True
        # continuous_usage_stats (a vLLM extension, ignored elsewhere) reports prompt tokens
        # in every chunk, so they are known even when early exit cuts the stream.
        body["stream_options"] = {"include_usage": True, "continuous_usage_stats": True}
    body.update(params or {})
    if messages is not None:
        body["messages"] = [dict(m) for m in messages]
        if top_logprobs is not None:
            body["logprobs"] = True
            body["top_logprobs"] = top_logprobs
        return CHAT_PATH, body
    body["prompt"] = prompt if isinstance(prompt, str) or prompt is None else list(prompt)
    if top_logprobs is not None:
        body["logprobs"] = top_logprobs
    return COMPLETIONS_PATH, body


async def sse_lines(response: httpx.Response, max_chars: int) -> AsyncGenerator[str, None]:
    """The event stream's lines, split only where SSE ends a line (CRLF, LF or CR).

    httpx's ``aiter_lines`` splits like ``str.splitlines``: also at U+2028, U+0085 and other
    separators that JSON leaves unescaped inside strings, so a candidate containing one cut its
    chunk in two (a "malformed chunk", and the backend marked unhealthy). A line longer than
    ``max_chars`` is a ProtocolError: waiting for its end would buffer without bound.
    """
    pending = ""
    async for text in response.aiter_text():
        lines = _SSE_EOL.split(pending + text)
        pending = lines.pop()  # no terminator yet: the rest of it is in the next read
        if len(pending) > max_chars:
            raise ProtocolError(
                f"backend {response.request.url.host}:{response.request.url.port} sent a "
                f"stream line longer than {max_chars} characters"
            )
        for line in lines:
            yield line
    if pending:
        yield pending


def parse_chunk(data: str) -> dict[str, Any]:
    """One stream line's JSON object; ValueError if it is none, ErrorReply for an error
    event (about this request: the server itself may be fine)."""
    chunk = json.loads(data)
    if not isinstance(chunk, dict):
        raise ValueError("a stream chunk must be a JSON object")
    if "error" in chunk:
        error = chunk["error"]
        # vLLM validates some fields (logit_bias against the vocabulary) only once the
        # stream has begun: a refusal of the request, sent as an event after the 200.
        if not isinstance(error, dict):
            raise ErrorReply(None, str(error), None, error)
        code, param = str(error.get("code")), error.get("param")
        raise ErrorReply(
            int(code) if code.isdigit() else None,
            str(error.get("message")),
            param if isinstance(param, str) else None,
            error,
        )
    return chunk


def logprob_entries(raw: Any, chat: bool) -> list[LogprobEntry]:
    """A choice's logprobs, in either API's shape: one entry per token it carries."""
    if not isinstance(raw, dict):
        return []
    if chat:
        return [
            (
                e.get("token", ""),
                e.get("logprob"),
                [(t.get("token", ""), t.get("logprob")) for t in (e.get("top_logprobs") or [])],
            )
            for e in raw.get("content") or []
        ]
    tokens = raw.get("tokens") or []
    lps = raw.get("token_logprobs") or []
    top_dicts = raw.get("top_logprobs") or [None] * len(tokens)
    return [
        (token, logprob, list((top or {}).items()))
        for token, logprob, top in zip(tokens, lps, top_dicts, strict=False)
    ]


async def read_error(response: httpx.Response) -> ErrorReply:
    """The error of a response with an error status: the API's ``error`` envelope, or the
    start of whatever else the body holds."""
    raw = (await response.aread()).decode("utf-8", "replace")
    param = None
    try:
        error = json.loads(raw)["error"]
        message, param = error["message"], error.get("param")
    except (ValueError, KeyError, TypeError, AttributeError):
        message = raw[:500]
    return ErrorReply(
        response.status_code,
        str(message),
        param if isinstance(param, str) else None,
        raw,
    )


async def post_json(
    client: httpx.AsyncClient, url: str, body: Mapping[str, Any], timeouts: httpx.Timeout
) -> dict[str, Any]:
    """POST ``body``; the JSON object answered, or EndpointError with the server's message."""
    try:
        response = await client.post(url, json=dict(body), timeout=timeouts)
    except httpx.TimeoutException as exc:
        raise TimeoutError(f"{url} timed out") from exc
    except httpx.HTTPError as exc:
        raise EndpointError(f"{url} is unreachable: {exc!r}") from exc
    if response.status_code >= 400:
        raise EndpointError(
            f"{url} answered {response.status_code}: {response.text[:MAX_ERROR_CHARS]}"
        )
    try:
        data = response.json()
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise EndpointError(f"{url} answered with no JSON object: {response.text[:100]!r}")
    return data


async def served_model(client: httpx.AsyncClient, base: str, timeouts: httpx.Timeout) -> str:
    """The first model ``base`` lists at ``/v1/models``."""
    try:
        response = await client.get(base + "/v1/models", timeout=timeouts)
        response.raise_for_status()
        return str(response.json()["data"][0]["id"])
    except httpx.TimeoutException as exc:
        raise TimeoutError(f"{base} timed out") from exc
    except httpx.TransportError as exc:
        raise EndpointError(f"{base} is unreachable: {exc!r}") from exc
    except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as exc:
        raise EndpointError(f"could not list the models at {base}: {exc!r}") from exc
