"""OpenAI-compatible endpoints for model-based verifiers, over httpx.

:class:`EndpointCompleter` is a :class:`~bestofk.verifiers.base.Completer` over ``/v1/completions``,
which takes a list of prompts: a batch of K judge prompts is one HTTP call, and the server
(vLLM, SGLang…) batches them together.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from bestofk.verifiers.base import Completion, TargetNotAllowedError

CONNECT_TIMEOUT_S = 5.0
MAX_ERROR_CHARS = 300


class EndpointError(RuntimeError):
    """The endpoint answered with an error, or with something that is not the expected JSON."""


def base_url(url: str) -> str:
    """``http://host:port`` from any of ``…``, ``…/``, ``…/v1``."""
    return url.rstrip("/").removesuffix("/v1")


def check_allowed(url: str | None, model: str | None, allowed: frozenset[str] | None) -> None:
    """Raise TargetNotAllowedError when the server restricts model access and this endpoint
    (or, without one, this local model) is not allowed."""
    if allowed is None:
        return
    if url is not None:
        if base_url(url) not in allowed:
            raise TargetNotAllowedError(base_url(url), "endpoint")
    elif model is not None and model not in allowed:
        raise TargetNotAllowedError(model, "model")


async def post_json(client: httpx.AsyncClient, url: str, body: Mapping[str, Any]) -> dict[str, Any]:
    """POST ``body``; the JSON object answered, or EndpointError with the server's message."""
    try:
        response = await client.post(url, json=dict(body))
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


async def served_model(client: httpx.AsyncClient, base: str) -> str:
    """The first model ``base`` lists at ``/v1/models``."""
    try:
        response = await client.get(base + "/v1/models")
        response.raise_for_status()
        return str(response.json()["data"][0]["id"])
    except httpx.TimeoutException as exc:
        raise TimeoutError(f"{base} timed out") from exc
    except httpx.TransportError as exc:
        raise EndpointError(f"{base} is unreachable: {exc!r}") from exc
    except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as exc:
        raise EndpointError(f"could not list the models at {base}: {exc!r}") from exc


class EndpointCompleter:
    """Greedy completions from an OpenAI-compatible server, all prompts in one call."""

    def __init__(self, url: str, model: str | None, timeout_s: float) -> None:
        self.base = base_url(url)
        self.model = model
        self.timeout = httpx.Timeout(timeout_s, connect=min(CONNECT_TIMEOUT_S, timeout_s))

    async def complete(
        self, prompts: Sequence[str], max_tokens: int, top_logprobs: int, request_id: str
    ) -> list[Completion]:
        """One ``/v1/completions`` call with every prompt; results in prompt order."""
        async with httpx.AsyncClient(timeout=self.timeout) as client:
            model = self.model or await served_model(client, self.base)
            data = await post_json(
                client,
                self.base + "/v1/completions",
                {
                    "model": model,
                    "prompt": list(prompts),
                    "max_tokens": max_tokens,
                    "temperature": 0.0,
                    "logprobs": top_logprobs,
                    "n": 1,
                },
            )
        return _completions(data, len(prompts))


def _completions(data: Mapping[str, Any], n: int) -> list[Completion]:
    choices = data.get("choices")
    if not isinstance(choices, list) or len(choices) != n:
        raise EndpointError(f"expected {n} choices, got {data.get('choices')!r:.200}")
    usage = data.get("usage")
    if not isinstance(usage, dict):
        usage = {}
    # Without logprobs a choice does not list its tokens: share the total out evenly.
    even_share = int(usage.get("completion_tokens") or 0) // max(n, 1)
    out: list[Completion | None] = [None] * n
    for position, choice in enumerate(choices):
        index = int(choice.get("index", position))
        if not 0 <= index < n:
            raise EndpointError(f"choice index {index} out of range")
        logprobs = choice.get("logprobs") or {}
        tokens = logprobs.get("tokens") or []
        token_lps = logprobs.get("token_logprobs") or []
        tops = logprobs.get("top_logprobs") or []
        positions = [
            {**(top or {}), token: lp}
            for token, lp, top in zip(tokens, token_lps, tops, strict=False)
            if lp is not None
        ]
        count = len(tokens) or even_share
        out[index] = Completion(str(choice.get("text") or ""), count, positions)
    if any(c is None for c in out):
        raise EndpointError("the endpoint skipped some prompts")
    return [c for c in out if c is not None]
