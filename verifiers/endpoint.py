"""OpenAI-compatible endpoints for model-based verifiers: which ones a spec may name, and the
judge's completer.

:class:`EndpointCompleter` is a :class:`~bestofk.verifiers.base.Completer` over ``/v1/completions``,
which takes a list of prompts: a batch of K judge prompts is one HTTP call, and the server
(vLLM, SGLang…) batches them together. The wire itself is :mod:`bestofk.verifiers.openai_http`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from bestofk.verifiers.base import Completion, TargetNotAllowedError
from bestofk.verifiers.openai_http import (
    EndpointError,
    PooledClient,
    base_url,
    logprob_entries,
    post_json,
    request_body,
    with_served_model,
)

CONNECT_TIMEOUT_S = 5.0


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


class EndpointCompleter:
    """Greedy completions from an OpenAI-compatible server, all prompts in one call."""

    def __init__(self, url: str, model: str | None, timeout_s: float, http: PooledClient) -> None:
        self.base = base_url(url)
        self.model = model
        self.timeout_s = timeout_s
        self.connect_s = min(CONNECT_TIMEOUT_S, timeout_s)
        self.http = http

    async def complete(
        self, prompts: Sequence[str], max_tokens: int, top_logprobs: int, request_id: str
    ) -> list[Completion]:
        """One ``/v1/completions`` call with every prompt; results in prompt order."""

        async def call(model: str) -> dict[str, Any]:
            path, body = request_body(
                model,
                prompt=prompts,
                top_logprobs=top_logprobs,
                params={"max_tokens": max_tokens, "temperature": 0.0},
            )
            url = self.base + path
            return await post_json(self.http, url, body, self.timeout_s, self.connect_s)

        if self.model is not None:
            data = await call(self.model)
        else:
            data = await with_served_model(self.http, self.base, self.timeout_s, call)
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
        entries = logprob_entries(choice.get("logprobs"), chat=False)
        positions = [{**dict(top), token: lp} for token, lp, top in entries if lp is not None]
        count = len(entries) or even_share
        out[index] = Completion(str(choice.get("text") or ""), count, positions)
    if any(c is None for c in out):
        raise EndpointError("the endpoint skipped some prompts")
    return [c for c in out if c is not None]
