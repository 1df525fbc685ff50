"""Sandbox benchmark: per-run overhead against a bare interpreter, runs/s, and 16 x 10 cases.

    python -m bestofk.tooling.bench.sandbox_bench [--runs 60]

Prints (all measured in this one process, interleaved, so machine load hits both sides):

- the median wall time of ``python3 -c pass`` (the sandbox's interpreter, no sandbox) and of
  one sandboxed run of a one-case job through a warm 1-slot pool, and their difference: the
  per-run overhead (target: at most 15 ms);
- the same for a cold pool (no warm sandbox: bwrap and Python start inside the measurement);
- sandboxed runs per second with 1 and 2 slots (many runs in flight at once);
- the wall time to verify 16 candidates x 10 call cases through the `unit_tests` verifier on a
  2-slot pool (target: under 0.5 s on 2 cores).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import time

from bestofk.verifiers.base import Candidate, RequestContext, VerifierResources
from bestofk.verifiers.sandbox import CallCase, Job, SandboxPool
from bestofk.verifiers.sandbox.bwrap import find_python
from bestofk.verifiers.unit_tests import UnitTestsSpec, UnitTestsVerifier

SQUARE = "def square(x):\n    return x * x\n"
ONE_CASE = Job(SQUARE, 2.0, "square", [CallCase([3], {}, 9)])


def bare_run_s(python: str) -> float:
    start = time.perf_counter()
    subprocess.run([python, "-c", "pass"], check=True)
    return time.perf_counter() - start


async def sandboxed_run_s(pool: SandboxPool) -> float:
    start = time.perf_counter()
    result = await pool.run(ONE_CASE)
    elapsed = time.perf_counter() - start
    assert result.passed, result
    return elapsed


async def overhead(python: str, warm: bool, runs: int) -> tuple[float, float]:
    """Median bare and sandboxed wall times, interleaved run by run."""
    pool = SandboxPool(slots=1, warm=warm)
    try:
        await sandboxed_run_s(pool)  # the first run also builds the seccomp filter
        bare, sandboxed = [], []
        for _ in range(runs):
            bare.append(bare_run_s(python))
            if warm:
                await asyncio.sleep(0.03)  # the gap between requests in which it warms up
            sandboxed.append(await sandboxed_run_s(pool))
        return statistics.median(bare), statistics.median(sandboxed)
    finally:
        pool.close()


async def throughput(slots: int, runs: int) -> float:
    pool = SandboxPool(slots=slots, max_queue=runs, queue_timeout_s=60)
    try:
        await asyncio.gather(*(pool.run(ONE_CASE) for _ in range(slots)))  # warm every slot
        start = time.perf_counter()
        results = await asyncio.gather(*(pool.run(ONE_CASE) for _ in range(runs)))
        elapsed = time.perf_counter() - start
        assert all(result.passed for result in results)
        return runs / elapsed
    finally:
        pool.close()


async def sixteen_by_ten() -> float:
    pool = SandboxPool(slots=2, queue_timeout_s=60)
    cases = [{"args": [i], "expected": i * i} for i in range(10)]
    spec = UnitTestsSpec.model_validate({"entry_point": "square", "cases": cases})
    verifier = UnitTestsVerifier(spec, VerifierResources(sandbox=pool))
    ctx = RequestContext(prompt="square")
    candidates = [Candidate(i, f"```python\n{SQUARE}```") for i in range(16)]
    try:
        await asyncio.gather(*(pool.run(ONE_CASE) for _ in range(2)))  # warm both slots
        start = time.perf_counter()
        verdicts = await asyncio.gather(*(verifier.verify(ctx, c) for c in candidates))
        elapsed = time.perf_counter() - start
        assert all(v.passed and v.detail == "all 10 tests passed" for v in verdicts)
        return elapsed
    finally:
        pool.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=60, help="runs per measurement")
    args = parser.parse_args()
    python = find_python()
    print(f"interpreter: {python}; runs per measurement: {args.runs}")
    for warm in (True, False):
        bare, sandboxed = await overhead(python, warm, args.runs)
        label = "warm" if warm else "cold"
        print(
            f"{label} pool: bare `python3 -c pass` {bare * 1000:.1f} ms, sandboxed run "
            f"{sandboxed * 1000:.1f} ms, overhead {(sandboxed - bare) * 1000:+.1f} ms (median)"
        )
    for slots in (1, 2):
        rate = await throughput(slots, args.runs)
        print(f"{slots} slot{'s' if slots > 1 else ''}: {rate:.1f} sandboxed runs/s")
    times = [await sixteen_by_ten() for _ in range(5)]
    print(
        f"16 candidates x 10 call cases: median {statistics.median(times) * 1000:.0f} ms, "
        f"best {min(times) * 1000:.0f} ms (5 tries, 2 slots)"
    )


if __name__ == "__main__":
    asyncio.run(main())
