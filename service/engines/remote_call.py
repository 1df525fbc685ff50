"""One streamed call to a remote backend: what it sends and how its answers read.

The request body (sampling fields, and vLLM's own fields only to vLLM), the connect and read
timeouts, the brief drain after ``[DONE]`` that keeps the connection pooled, a delta's logprobs
into the candidate, and the backend's refusals as our errors. The stream that makes the calls
is :mod:`bestofk.service.engines.remote_stream`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from bestofk.service.engines.base import STREAM_INTERVAL, PartialSample, Prompt, SamplingConfig
from bestofk.service.engines.errors import EngineFailedError, RequestRejectedError
from bestofk.verifiers.base import TokenLogprob
from bestofk.verifiers.openai_http import ErrorReply, LogprobEntry, request_body

CONNECT_TIMEOUT_S = 5.0
"""How long connecting to a backend may take. No setting: a backend that takes longer to
accept a connection is down, and the health checks take it out of rotation."""
READ_TIMEOUT_S = 600.0
"""How long a backend may go without sending a byte mid-request. No setting: the request
deadline (``limits.request_timeout_s``, 300 s by default) usually ends a request first; this
only ends a silent backend's stream when an operator sets a longer deadline."""
DRAIN_S = 1.0
"""How long to wait for a backend to end its body after ``[DONE]`` before dropping it."""


class NRefusedError(Exception):
    """The backend answered 400 to ``n > 1``."""


def sampling_body(
    model: str, prompt: Prompt, n: int, sampling: SamplingConfig, vllm: bool = False
) -> tuple[str, dict[str, Any]]:
    """The path and body of one streamed call for ``n`` candidates of ``prompt``; ``vllm``:
    the backend is vLLM, which takes its own fields too."""
    params: dict[str, Any] = {
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
    params.update({name: value for name, (value, off) in extensions.items() if value != off})
    if vllm:
        # Only to vLLM: a stricter server could refuse the unknown fields.
        params["stream_interval"] = STREAM_INTERVAL
        if not sampling.wants_logprobs:
            params["return_token_ids"] = True  # each candidate's token count, without logprobs
    if sampling.stop:
        params["stop"] = list(sampling.stop)
    if sampling.seed is not None:
        params["seed"] = sampling.seed
    if sampling.logit_bias:
        params["logit_bias"] = {str(k): v for k, v in sampling.logit_bias.items()}
    if prompt.chat_template_kwargs and prompt.messages is not None:
        # vLLM's field (SGLang's too); a server without it ignores or refuses it, as asked.
        params["chat_template_kwargs"] = dict(prompt.chat_template_kwargs)
    if prompt.tools:
        # The backend renders the tools into its template and returns the raw text, which is
        # parsed here, as every candidate's calls are (``none``: it parses nothing).
        params["tools"] = [dict(t) for t in prompt.tools]
        params["tool_choice"] = "none"
    if vllm and not sampling.skip_special_tokens:
        params["skip_special_tokens"] = False
    if sampling.json_schema is not None:
        params["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "response", "schema": dict(sampling.json_schema)},
        }
    return request_body(
        model,
        prompt=prompt.text,
        messages=prompt.messages,
        n=n,
        top_logprobs=(sampling.top_logprobs or 0) if sampling.wants_logprobs else None,
        stream=True,
        params=params,
    )


async def drain(lines: AsyncIterator[str]) -> None:
    """Read what follows ``[DONE]`` (the end of the chunked body), briefly.

    A response closed before its body ends takes its connection with it: every request then
    opened a new TCP connection to the backend, a cost on both sides (about 2 ms a request on
    the CPU build). Read to the end and the connection is pooled for the next request."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(DRAIN_S):
            async for _ in lines:
                pass


def add_logprobs(acc: PartialSample, entries: list[LogprobEntry]) -> None:
    """Add a delta's logprob ``entries`` to ``acc`` (an entry without a logprob adds nothing)."""
    for token, logprob, top in entries:
        if logprob is None:
            continue
        acc.has_logprobs = True
        acc.logprob += float(logprob)
        acc.logprobs.append(
            TokenLogprob(token, float(logprob), tuple((t, float(v)) for t, v in top if t != token))
        )


def refusal(reply: ErrorReply, n: int | None) -> Exception:
    """Our error for the backend's: its answer to the call (``n``: how many it asked for), or
    an error event mid-stream (``n`` None)."""
    if n is not None and reply.status == 400 and n > 1 and "n" in reply.message.lower().split("'"):
        return NRefusedError(reply.message)
    if reply.rejected:
        return RequestRejectedError(
            f"the backend rejected the request: {reply.message}", param=reply.param
        )
    if n is None:
        return EngineFailedError(f"backend error mid-stream: {reply.detail}")
    return EngineFailedError(f"backend answered {reply.status}: {reply.message}")
