"""The in-process engine's routes against vLLM's own call, on one engine, in one process.

``bestofk bench`` compares (i), bestofk with its own engine, against (b), ``vllm serve``: two
engines, each a process pinned to the same core, so a ratio between them also carries whatever
sets one engine instance apart from the other. This takes the engine out of the comparison:
one ``AsyncLLM``, and the same prompts and seeds asked for four ways, in turns:

    vllm n=K final   vLLM's non-streamed n=K call, as its OpenAI server makes it (the baseline)
    vllm n=K delta   the same, streamed as deltas
    bestofk split    bestofk's stream as (i) runs it: K requests of n=1, deltas (the default)
    bestofk joint    bestofk's stream with one n=K request, as (m) runs it

Each figure is the median wall time of one best-of-K generation over the rounds, and its ratio
to the baseline; the order of the four rotates every round, so no route always goes first.

    python -m bestofk.tooling.bench.engine_routes [--rounds 48] [--k 8] [--model PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import time
from collections.abc import Awaitable, Callable

from bestofk.service.bundled_model import DEMO_MODEL
from bestofk.service.engines.base import Prompt, SamplingConfig
from bestofk.service.engines.vllm_local import VllmEngine
from bestofk.service.metrics import Metrics
from bestofk.service.server import engine_env
from bestofk.service.settings import Settings
from bestofk.tooling.bench import DEMO_TASKS
from bestofk.tooling.bench.modes import SEED_STRIDE, load_tasks
from bestofk.tooling.bench.stack import BENCH_MAX_NUM_SEQS

MAX_TOKENS = 160
"""As the bench's code workload asks."""

Route = Callable[[str, int, str], Awaitable[None]]


def routes(engine: VllmEngine, k: int) -> dict[str, Route]:
    """The four ways of asking, each ``(prompt, seed, request_id) -> None``."""
    from vllm.sampling_params import RequestOutputKind, SamplingParams

    def vllm_call(kind: RequestOutputKind) -> Route:
        async def run(prompt: str, seed: int, request_id: str) -> None:
            engine_input = await engine.render(Prompt(text=prompt))
            params = SamplingParams(
                n=k, temperature=1.0, max_tokens=MAX_TOKENS, seed=seed, output_kind=kind
            )
            async for _ in engine.llm.generate(engine_input, params, request_id):
                pass

        return run

    def bestofk_stream(split: bool) -> Route:
        async def run(prompt: str, seed: int, request_id: str) -> None:
            engine.split_candidates = split  # read when the stream starts
            sampling = SamplingConfig(
                temperature=1.0, max_tokens=MAX_TOKENS, seed=seed, logprobs=False
            )
            async with contextlib.aclosing(
                engine.sample(Prompt(text=prompt), k, sampling, request_id)
            ) as stream:
                async for _ in stream:
                    pass

        return run

    return {
        "vllm n=K final": vllm_call(RequestOutputKind.FINAL_ONLY),
        "vllm n=K delta": vllm_call(RequestOutputKind.DELTA),
        "bestofk split": bestofk_stream(True),
        "bestofk joint": bestofk_stream(False),
    }


async def measure(model: str, k: int, rounds: int, warmup: int = 2) -> dict[str, list[float]]:
    """Wall ms per route per round, on one engine."""
    engine_env()
    settings = Settings(
        model=model,
        served_model_name="demo",
        vllm={"engine_args": {"max_num_seqs": int(BENCH_MAX_NUM_SEQS)}},
    )
    engine = VllmEngine(settings, Metrics())
    await engine.start()
    try:
        ways = routes(engine, k)
        names = list(ways)
        # The bench's code workload.
        prompts = [task.prompt for task in load_tasks(DEMO_TASKS, "code")]
        times: dict[str, list[float]] = {name: [] for name in names}
        for i in range(warmup + rounds):
            turn = names[i % len(names) :] + names[: i % len(names)]
            for name in turn:
                start = time.perf_counter()
                request_id = f"round{i}-{names.index(name)}"
                await ways[name](prompts[i % len(prompts)], SEED_STRIDE * i, request_id)
                if i >= warmup:
                    times[name].append((time.perf_counter() - start) * 1000)
        return times
    finally:
        await engine.close()


def report(times: dict[str, list[float]], k: int) -> str:
    """A markdown table: median, quartiles and the ratio of medians to the baseline."""
    baseline = next(iter(times.values()))
    base = statistics.median(baseline)
    lines = [
        f"best-of-{k} on one in-process engine, {len(baseline)} rounds",
        "",
        "| route | p50 ms | p25 ms | p75 ms | p50 ÷ vllm n=K final |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, values in times.items():
        q1, _, q3 = statistics.quantiles(values, n=4)
        med = statistics.median(values)
        lines.append(f"| {name} | {med:.1f} | {q1:.1f} | {q3:.1f} | {med / base:.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    """``python -m bestofk.tooling.bench.engine_routes``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(DEMO_MODEL))
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=48)
    args = parser.parse_args()
    print(report(asyncio.run(measure(args.model, args.k, args.rounds)), args.k), end="")


if __name__ == "__main__":
    main()
