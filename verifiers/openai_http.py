"""The OpenAI wire, once: request bodies, the event stream, chunks, logprobs, error replies.

Both clients of OpenAI-compatible servers speak through this module: the remote engine
(``engines/remote_stream.py`` and ``remote_call.py`` of the server, streamed sampling) and the
model-based verifiers (:mod:`bestofk.verifiers.endpoint` for a judge,
:mod:`bestofk.verifiers.reward_model`).

It lives under ``verifiers/`` because that is the package both sides may import: the service
imports the verifiers, never the reverse. The other seam, the endpoint completer moving to the
service and reaching the verifiers as a factory in ``VerifierResources``, would leave a verifier
built without the app (the GRPO reward, tests, the bench) unable to call an endpoint, and the
reward model's ``/classify`` call would need a second factory. The module is a leaf: aiohttp and
JSON, no bestofk imports, and exceptions of its own that each side turns into its errors.

The transport is aiohttp, not httpx (which the CLI and the tooling use as clients): on the hot
path, one streamed ``n=K`` completion per request, httpx spent 0.9 ms of CPU per call against
0.27 ms for aiohttp (an instant backend, the same body; ``python -m bestofk.tooling.bench.cpu``
prices the whole request). On a machine where the engine shares the cores, that is the engine's.
"""

from __future__ import annotations

import codecs
import contextlib
import json
import re
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import aiohttp

KEEPALIVE_S = 2.0
"""Idle pooled connections are dropped after this. vLLM's server (uvicorn) closes them after
5 s; a request sent on one as it closes fails with a transport error."""
MAX_ERROR_CHARS = 300
COMPLETIONS_PATH = "/v1/completions"
CHAT_PATH = "/v1/chat/completions"

_SSE_EOL = re.compile(r"\r\n|\r|\n")
T = TypeVar("T")

LogprobEntry = tuple[str, float | None, list[tuple[str, float]]]
"""A token, its logprob (None if the server sent none) and its top alternatives."""


class EndpointError(RuntimeError):
    """The endpoint answered with an error, or with something that is not the expected JSON."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        """The HTTP status of an error reply; None for every other failure."""


class ProtocolError(Exception):
    """A server's event stream is not the protocol (a line without end)."""


class TransportError(Exception):
    """The connection failed: refused, reset, or closed mid-body."""


class ReadTimeout(Exception):
    """The server sent nothing for longer than the read timeout.

    Not a ``TimeoutError``: callers keep that for deadlines of their own."""


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


class PooledClient:
    """One aiohttp session for a process's calls to one kind of server, made on first use.

    A client per call opened a TCP connection per call; this one keeps them alive between
    calls: no cap on concurrent calls (a cap would queue them behind each other), idle
    connections closed before the server closes them. Each call passes its own timeouts.
    Its owner closes it (the app at shutdown, the engine when it closes).
    """

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None
        self.models: dict[str, str] = {}
        """The model each server serves, by base URL, for calls that name none: looked up
        once (:func:`served_model`), forgotten when the server no longer knows it."""

    @property
    def session(self) -> aiohttp.ClientSession:
        """The shared session, made on first use (inside the running event loop)."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=KEEPALIVE_S),
                # The JSON the servers send is ours to check, whatever its content type says.
                raise_for_status=False,
            )
        return self._session

    async def aclose(self) -> None:
        """Close its connections; a later call makes a new session."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()


@contextlib.asynccontextmanager
async def stream(
    http: PooledClient,
    url: str,
    body: Mapping[str, Any],
    headers: Mapping[str, str],
    *,
    connect_s: float,
    read_s: float,
) -> AsyncIterator[aiohttp.ClientResponse]:
    """POST ``body`` and hold the response open for reading (any status: read it with
    :func:`read_error` or :func:`sse_lines`). Leaving before the body's end closes the
    connection, which is what makes a server abort the generation.

    Failures inside the block, the reading included, come out as :class:`TransportError` or
    :class:`ReadTimeout`."""
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_s, sock_read=read_s)
    try:
        async with http.session.post(
            url, json=dict(body), headers=dict(headers), timeout=timeout
        ) as response:
            yield response
    except aiohttp.ServerTimeoutError as exc:  # before ClientError: it is one too
        raise ReadTimeout(f"{url}: {exc!r}") from exc
    except aiohttp.ClientError as exc:
        raise TransportError(f"{exc!r}") from exc


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


async def sse_lines(response: aiohttp.ClientResponse, max_chars: int) -> AsyncGenerator[str, None]:
    """The event stream's lines, split only where SSE ends a line (CRLF, LF or CR).

    Not ``str.splitlines``, which also splits at U+2028, U+0085 and other separators that JSON
    leaves unescaped inside strings: a candidate containing one would cut its chunk in two (a
    "malformed chunk", and the backend marked unhealthy). A line longer than ``max_chars`` is a
    ProtocolError: waiting for its end would buffer without bound.
    """
    pending = ""
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    async for data in response.content.iter_any():
        lines = _SSE_EOL.split(pending + decoder.decode(data))
        pending = lines.pop()  # no terminator yet: the rest of it is in the next read
        if len(pending) > max_chars:
            raise ProtocolError(
                f"backend {response.url.host}:{response.url.port} sent a stream line longer "
                f"than {max_chars} characters"
            )
        for line in lines:
            yield line
    pending += decoder.decode(b"", final=True)
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


async def read_error(response: aiohttp.ClientResponse) -> ErrorReply:
    """The error of a response with an error status: the API's ``error`` envelope, or the
    start of whatever else the body holds."""
    raw = (await response.read()).decode("utf-8", "replace")
    param = None
    try:
        error = json.loads(raw)["error"]
        message, param = error["message"], error.get("param")
    except (ValueError, KeyError, TypeError, AttributeError):
        message = raw[:500]
    return ErrorReply(
        response.status,
        str(message),
        param if isinstance(param, str) else None,
        raw,
    )


async def _request_json(
    http: PooledClient,
    method: str,
    url: str,
    timeout_s: float,
    connect_s: float | None,
    body: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> Any:
    """The JSON a call answers; TimeoutError past ``timeout_s``, EndpointError for anything
    else that is not a 2xx with a JSON body."""
    timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=connect_s)
    try:
        async with http.session.request(
            method,
            url,
            json=None if body is None else dict(body),
            headers=None if headers is None else dict(headers),
            timeout=timeout,
        ) as response:
            raw = await response.read()
            status = response.status
    except TimeoutError as exc:  # the total timeout, or a ServerTimeoutError (a ClientError too)
        raise TimeoutError(f"{url} timed out") from exc
    except aiohttp.ClientError as exc:
        raise EndpointError(f"{url} is unreachable: {exc!r}") from exc
    text = raw.decode("utf-8", "replace")
    if status >= 400:
        raise EndpointError(f"{url} answered {status}: {text[:MAX_ERROR_CHARS]}", status)
    try:
        return json.loads(text)
    except ValueError:
        raise EndpointError(f"{url} answered with no JSON: {text[:100]!r}") from None


async def get_json(
    http: PooledClient, url: str, timeout_s: float, headers: Mapping[str, str] | None = None
) -> Any:
    """GET ``url``'s JSON (TimeoutError, or EndpointError with the reason)."""
    return await _request_json(http, "GET", url, timeout_s, None, headers=headers)


async def post_json(
    http: PooledClient,
    url: str,
    body: Mapping[str, Any],
    timeout_s: float,
    connect_s: float | None = None,
) -> dict[str, Any]:
    """POST ``body``; the JSON object answered, or EndpointError with the server's message."""
    data = await _request_json(http, "POST", url, timeout_s, connect_s, body=body)
    if not isinstance(data, dict):
        raise EndpointError(f"{url} answered with no JSON object: {str(data)[:100]!r}")
    return data


async def served_model(http: PooledClient, base: str, timeout_s: float) -> str:
    """The first model ``base`` lists at ``/v1/models``, asked once and kept in ``http``."""
    if (known := http.models.get(base)) is not None:
        return known
    data = await get_json(http, base + "/v1/models", timeout_s)
    try:
        model = str(data["data"][0]["id"])
    except (KeyError, IndexError, TypeError) as exc:
        raise EndpointError(f"could not list the models at {base}: {exc!r}") from exc
    http.models[base] = model
    return model


async def with_served_model(
    http: PooledClient, base: str, timeout_s: float, call: Callable[[str], Awaitable[T]]
) -> T:
    """``call(model)`` with the model ``base`` serves (:func:`served_model`).

    A name kept from an earlier call can be stale: the server restarted with another model.
    vLLM then answers 404 (``The model `x` does not exist``), so on a 404 with a kept name
    the name is looked up again and the call made once more. A 404 with a name just looked up
    is the server's answer, passed on."""
    kept = base in http.models
    model = await served_model(http, base, timeout_s)
    try:
        return await call(model)
    except EndpointError as exc:
        if not kept or exc.status != 404:
            raise
    if http.models.get(base) == model:  # not yet replaced by a concurrent call
        del http.models[base]
    return await call(await served_model(http, base, timeout_s))
