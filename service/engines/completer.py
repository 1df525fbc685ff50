"""The serving engine as a judge model: :class:`bestofk.verifiers.base.Completer` over any Engine.

A batch of N prompts becomes N concurrent ``k=1`` greedy requests. The engine batches them:
in-process vLLM schedules requests that arrive together into the same steps (continuous
batching), and a remote vLLM server does the same with concurrent HTTP requests. The engine's
protocol has no multi-prompt call, and none is needed for that.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from bestofk.service.engines.base import Engine, Prompt, SamplingConfig
from bestofk.verifiers.base import Candidate, Completion


class EngineCompleter:
    """Greedy completions from the engine that also generates the candidates."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def complete(
        self, prompts: Sequence[str], max_tokens: int, top_logprobs: int, request_id: str
    ) -> list[Completion]:
        """All prompts at once; raises the first engine error."""
        sampling = SamplingConfig(temperature=0.0, max_tokens=max_tokens, top_logprobs=top_logprobs)
        return list(
            await asyncio.gather(
                *(
                    self._one(prompt, sampling, f"{request_id}-{i}")
                    for i, prompt in enumerate(prompts)
                )
            )
        )

    async def _one(self, prompt: str, sampling: SamplingConfig, request_id: str) -> Completion:
        stream = self.engine.sample(Prompt(text=prompt), 1, sampling, request_id)
        sample: Candidate | None = None
        try:
            async for first in stream:  # k=1: the one and only sample
                sample = first
                break
        finally:
            # Closing aborts the request in the engine if we were cancelled (timeout).
            await stream.aclose()
        if sample is None:
            raise RuntimeError("the engine returned no completion")
        return Completion(
            text=sample.text,
            tokens=sample.tokens,
            top_logprobs=[{t.token: t.logprob, **dict(t.top)} for t in sample.logprobs],
        )
