"""The in-process engine with a trivial watch (test_adaptive runs this in a process of its own:
vLLM is not imported into the test process). Prints each candidate as JSON, one a line."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Sequence

from bestofk.service.engines.base import Prompt, SamplingConfig
from bestofk.service.engines.vllm_local import VllmEngine
from bestofk.service.metrics import Metrics
from bestofk.service.settings import Settings
from bestofk.verifiers.base import TokenLogprob


class CutFive:
    """Cuts candidate 5 at its first delta."""

    def delta(self, index: int, logprobs: Sequence[TokenLogprob]) -> bool:
        return index == 5


async def main(model: str) -> None:
    # The settings' vLLM defaults are the CPU build's (gpu_memory_utilization 0.3, eager).
    engine = VllmEngine(Settings(model=model), Metrics())
    await engine.start()
    try:
        sampling = SamplingConfig(temperature=1.0, max_tokens=120, min_tokens=100, seed=5)
        prompt = Prompt(text="What's the factorial of 5? (Respond with a number only)")
        # Candidates 4, 5 and 6: a later wave's.
        stream = engine.sample(prompt, 3, sampling, "watched", 4, CutFive())
        try:
            async for s in stream:
                print(json.dumps({"index": s.index, "cut": s.cut, "finish": s.finish_reason,
                                  "tokens": s.tokens}), flush=True)  # fmt: skip
        finally:
            await stream.aclose()
        # The cut and the closed stream left nothing running in the engine.
        running = engine.llm.output_processor.get_num_unfinished_requests()
        print(json.dumps({"unfinished": running}), flush=True)
    finally:
        await engine.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
