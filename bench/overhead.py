"""Service overhead: /generate k=K against a direct vLLM n=K request, interleaved.

Starts a vLLM OpenAI server and two bestofk servers (in-process engine, and the remote engine
in front of that vLLM server), then times, round-robin, N requests of each:
  direct   POST vLLM /v1/completions with n=K
  remote   POST bestofk(--backend vLLM) /generate k=K (same engine as direct)
  local    POST bestofk(in-process vLLM) /generate k=K
Usage: python bench/overhead.py [--model demo/model] [--k 8] [--runs 20] [--max-tokens 32]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import httpx

from tests.servers import engine_env, running, start_bestofk, start_vllm_openai

PROMPT = "What's the factorial of 5? (Respond with a number only)"


def main() -> None:
    """Run the comparison and print medians and ratios as JSON."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=str(Path(__file__).parent.parent / "demo" / "model"))
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--max-tokens", type=int, default=32)
    ns = parser.parse_args()
    logs = Path(tempfile.mkdtemp(prefix="bestofk-overhead-"))
    env = engine_env(BESTOFK_SERVED_MODEL_NAME="demo")
    with ExitStack() as stack:
        vllm = start_vllm_openai(logs / "vllm.log", ns.model, "demo")
        local = start_bestofk(logs / "local.log", "--model", ns.model, env=env)
        stack.enter_context(running(vllm, 300))
        stack.enter_context(running(local, 300))
        remote = stack.enter_context(
            running(start_bestofk(logs / "remote.log", "--backend", vllm.url, env=env), 60)
        )
        sampling = {"temperature": 1.0, "max_tokens": ns.max_tokens}
        calls = {
            "direct": (
                vllm.url + "/v1/completions",
                {"model": "demo", "prompt": PROMPT, "n": ns.k, **sampling},
            ),
            "remote": (
                remote.url + "/generate",
                {"prompt": PROMPT, "k": ns.k, "sampling": sampling},
            ),
            "local": (local.url + "/generate", {"prompt": PROMPT, "k": ns.k, "sampling": sampling}),
        }
        times: dict[str, list[float]] = {name: [] for name in calls}
        with httpx.Client(timeout=120) as client:
            for url, body in calls.values():  # warm-up, not timed
                client.post(url, json=body).raise_for_status()
            for _ in range(ns.runs):
                for name, (url, body) in calls.items():
                    start = time.perf_counter()
                    client.post(url, json=body).raise_for_status()
                    times[name].append((time.perf_counter() - start) * 1000)
    medians = {name: statistics.median(t) for name, t in times.items()}
    print(
        json.dumps(
            {
                "k": ns.k,
                "runs": ns.runs,
                "median_ms": {n: round(m, 1) for n, m in medians.items()},
                "ratio_vs_direct": {n: round(m / medians["direct"], 3) for n, m in medians.items()},
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
