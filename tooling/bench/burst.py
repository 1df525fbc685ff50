"""``python -m bestofk.tooling.bench.burst URL [N]``: a burst of N K=8 requests, twice.

What load-aware K is for: every request of the burst starts together, and the answer is each
one's latency, the K it was given and the tokens generated in all. Run it against a server
with and without ``--load-aware-k`` (the README's figures: ``--engine-arg max_num_seqs=8``).
The first burst after a warm-up request still meets the engine's first large batches; the
second is the steady one.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time

import httpx

BODY = {
    "prompt": "Think step by step, then give the factorial of 8 as a number.",
    "k": 8,
    "sampling": {"temperature": 1.0, "max_tokens": 64},
}


async def one(client: httpx.AsyncClient) -> tuple[float, int, int]:
    """(latency in s, stats.k, completion tokens) of one request."""
    start = time.perf_counter()
    response = await client.post("/generate", json=BODY)
    response.raise_for_status()
    body = response.json()
    return time.perf_counter() - start, body["stats"]["k"], body["usage"]["completion_tokens"]


async def bursts(url: str, n: int) -> None:
    """A warm-up request, then two bursts of ``n``, one line each."""
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        await one(client)
        for _ in range(2):
            start = time.perf_counter()
            results = await asyncio.gather(*(one(client) for _ in range(n)))
            wall = time.perf_counter() - start
            latencies = sorted(r[0] for r in results)
            print(
                f"burst of {n}: wall {wall:.2f} s, p50 {statistics.median(latencies):.2f} s, "
                f"max {latencies[-1]:.2f} s, k {sorted(r[1] for r in results)}, "
                f"completion tokens {sum(r[2] for r in results):,}"
            )


def main() -> None:
    """Run the bursts against ``sys.argv[1]``."""
    asyncio.run(bursts(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 16))


if __name__ == "__main__":
    main()
