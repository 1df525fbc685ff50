"""bestofk as the reward of on-policy RL: a reward function for TRL's ``GRPOTrainer``.

GRPO samples ``num_generations`` completions of each prompt; they arrive in one batch, and the
function sends each prompt's group to ``POST /verify`` in one call (the server verifies the
candidates concurrently, the sandbox included), all groups at once. The task's verifiers come
from a dataset column (``verifiers``: a JSON list of specs, or the list itself), the server's
profile, or both.

A failed call is not a wrong answer, but the trainer needs a number: the group gets reward 0
and a warning, and ``usage["errors"]`` counts it. TRL passes ``log_metric``; the function logs
its errors and verify latency through it, so they show beside the reward in the trainer's logs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

import httpx

log = logging.getLogger(__name__)

Field = Literal["passed", "score"]


def _text(completion: Any) -> str:
    """A completion as text: TRL's conversational completions are a list of messages."""
    if isinstance(completion, str):
        return completion
    return str(completion[-1]["content"])


def _specs(raw: Any) -> list[dict[str, Any]]:
    if raw is None or raw == "":
        return []
    specs = json.loads(raw) if isinstance(raw, str) else raw
    if not isinstance(specs, list):
        raise ValueError(f"a verifiers column holds a list of specs, got {type(specs).__name__}")
    return list(specs)


class BestOfKReward:
    """``reward_funcs=[BestOfKReward(url)]``: each completion's ``passed`` (1/0) or combined
    ``score`` from a live bestofk's ``/verify``.

    ``profile`` applies a server-side profile's verifiers to every prompt; a dataset column
    named ``verifiers`` adds per-prompt specs. ``usage`` accumulates calls, candidates, verifier
    tokens (an LLM judge's), errors and seconds over the run.
    """

    def __init__(
        self,
        url: str,
        *,
        field: Field = "passed",
        profile: str | None = None,
        api_key: str | None = None,
        timeout_s: float = 120.0,
    ) -> None:
        self.url = url.rstrip("/")
        self.field: Field = field
        self.profile = profile
        self.timeout_s = timeout_s
        self._headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self.usage: dict[str, float] = dict.fromkeys(
            ("calls", "candidates", "verifier_tokens", "errors", "seconds"), 0.0
        )

    async def __call__(
        self,
        prompts: Sequence[Any],
        completions: Sequence[Any],
        verifiers: Sequence[Any] | None = None,
        log_metric: Callable[[str, float], None] | None = None,
        **_: Any,
    ) -> list[float]:
        """One reward per completion, in order."""
        groups: dict[str, list[int]] = {}
        for i, prompt in enumerate(prompts):
            spec = verifiers[i] if verifiers is not None else None
            key = json.dumps([prompt, spec], sort_keys=True, default=str)
            groups.setdefault(key, []).append(i)
        rewards = [0.0] * len(completions)
        started = time.perf_counter()
        async with httpx.AsyncClient(
            base_url=self.url, headers=self._headers, timeout=self.timeout_s
        ) as client:
            results = await asyncio.gather(
                *(
                    self._group(client, prompts[idx[0]], verifiers, idx, completions)
                    for idx in groups.values()
                )
            )
        errors = 0
        for indices, scores in zip(groups.values(), results, strict=True):
            if scores is None:
                errors += 1
                continue
            for i, value in zip(indices, scores, strict=True):
                rewards[i] = value
        seconds = time.perf_counter() - started
        self.usage["errors"] += errors
        self.usage["seconds"] += seconds
        if log_metric is not None:
            log_metric("bestofk/verify_errors", float(errors))
            log_metric("bestofk/verify_seconds", seconds)
        return rewards

    async def _group(
        self,
        client: httpx.AsyncClient,
        prompt: Any,
        verifiers: Sequence[Any] | None,
        indices: list[int],
        completions: Sequence[Any],
    ) -> list[float] | None:
        """The rewards of one prompt's completions, or None (logged) when the call failed."""
        body: dict[str, Any] = {
            "candidates": [_text(completions[i]) for i in indices],
            "verifiers": _specs(verifiers[indices[0]]) if verifiers is not None else [],
            "profile": self.profile,
        }
        body["messages" if isinstance(prompt, list) else "prompt"] = prompt
        try:
            reply = await client.post("/verify", json=body)
        except httpx.HTTPError as exc:
            log.warning(
                "bestofk /verify failed (%s): reward 0 for %d completions", exc, len(indices)
            )
            return None
        if reply.status_code != 200:
            log.warning(
                "bestofk /verify answered %d (%s): reward 0 for %d completions",
                reply.status_code, reply.text[:300], len(indices),
            )  # fmt: skip
            return None
        result = reply.json()
        self.usage["calls"] += 1
        self.usage["candidates"] += len(indices)
        self.usage["verifier_tokens"] += result["usage"].get("verifier_tokens") or 0
        by_index = {c["index"]: c for c in result["candidates"]}
        return [float(by_index[j][self.field]) for j in range(len(indices))]
