"""The interleaved load grid: every mode at every (concurrency, K), round-robin within a cell.

A cell's requests are split into rounds of ``concurrency`` requests. In each round every mode
runs one burst: ``concurrency`` requests started together, timed until the last one answers.
The mode order rotates from round to round, so machine drift (other processes, thermal, the
engine's cache) hits every mode alike instead of whichever ran last. A mode's throughput is
its requests (or generated tokens) over the summed wall time of its bursts.
"""

from __future__ import annotations

import asyncio
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from bestofk.tooling.bench.modes import (
    BASELINE,
    ENGINE_SWITCH_PAUSE_S,
    LOCAL_MODES,
    Call,
    ModeError,
    Outcome,
)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100), linearly interpolated between closest ranks."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def ratio(a: float, b: float) -> float | None:
    """a / b, or None when either side is missing or b is zero."""
    if math.isnan(a) or math.isnan(b) or b == 0:
        return None
    return a / b


@dataclass(slots=True)
class ModeRun:
    """Everything one mode produced in one cell."""

    outcomes: list[Outcome] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    latency_s: dict[int, float] = field(default_factory=dict)
    """Each answered request's latency, by its number in the cell."""

    def summary(self) -> dict[str, Any]:
        """Latency percentiles (ms), requests/s, generated tokens/s, and the counts."""
        latencies = [o.latency_s * 1000 for o in self.outcomes]
        tokens = sum(o.tokens for o in self.outcomes)
        wall = self.wall_s or math.nan
        return {
            "ok": len(self.outcomes),
            "errors": len(self.errors),
            "first_errors": sorted(set(self.errors))[:3],
            "p50_ms": percentile(latencies, 50),
            "p95_ms": percentile(latencies, 95),
            "requests_per_s": len(self.outcomes) / wall,
            "tokens_per_s": tokens / wall,
            "tokens_per_request": tokens / len(self.outcomes) if self.outcomes else math.nan,
        }


RATIO_FIELDS = ("p50_ms", "p95_ms", "requests_per_s", "tokens_per_s")


def paired_ratio(run: ModeRun, base: ModeRun) -> float | None:
    """The median, over the requests both answered, of ``run``'s latency over ``base``'s for
    the same request number. Where requests are seeded each pair generates the very same
    tokens, so this leaves out how long one request is against another, which the ratio of
    the two p50s keeps: it is the steadier figure of a route's cost."""
    ratios = [
        run.latency_s[i] / base.latency_s[i]
        for i in sorted(run.latency_s.keys() & base.latency_s.keys())
        if base.latency_s[i] > 0
    ]
    return statistics.median(ratios) if ratios else None


def summaries(runs: dict[str, ModeRun], seeded: bool) -> dict[str, dict[str, Any]]:
    """Each mode's summary with its ratios to (b): :func:`with_ratios`, plus ``paired_p50``
    (:func:`paired_ratio`) where the cell was ``seeded`` (else None: unseeded pairs generate
    different tokens, and their ratio says less than the p50s')."""
    out = with_ratios({name: run.summary() for name, run in runs.items()})
    base = runs.get(BASELINE)
    for name, run in runs.items():
        paired = paired_ratio(run, base) if base and seeded else None
        out[name]["vs_b"]["paired_p50"] = paired
    return out


def with_ratios(modes: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each mode's summary plus ``vs_b``: every figure divided by the baseline's (b)."""
    base = modes.get(BASELINE)
    for summary in modes.values():
        summary["vs_b"] = {
            name: ratio(summary[name], base[name]) if base else None for name in RATIO_FIELDS
        }
    return modes


async def _one(call: Call, client: httpx.AsyncClient, k: int, i: int) -> Outcome | str:
    try:
        return await call(client, k, i)
    except (ModeError, httpx.HTTPError, KeyError, ValueError, TypeError) as exc:
        return f"{type(exc).__name__}: {exc}"[:400]


async def run_cell(
    client: httpx.AsyncClient,
    calls: dict[str, Call],
    concurrency: int,
    k: int,
    requests: int,
    on_burst: Callable[[str], None] | None = None,
) -> dict[str, ModeRun]:
    """``requests`` requests of every mode at ``concurrency``, interleaved burst by burst,
    pausing untimed where a burst meets the other engine than the last one."""
    runs = {name: ModeRun() for name in calls}
    names = list(calls)
    rounds = math.ceil(requests / concurrency)
    engine: str | None = None
    for r in range(rounds):
        size = min(concurrency, requests - r * concurrency)
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            # Each in-process mode has an engine of its own; the rest share the backend's.
            here = name if name in LOCAL_MODES else "backend"
            if engine is not None and engine != here:
                await asyncio.sleep(ENGINE_SWITCH_PAUSE_S)
            engine = here
            run = runs[name]
            first = r * concurrency
            start = time.perf_counter()
            results = await asyncio.gather(
                *(_one(calls[name], client, k, first + i) for i in range(size))
            )
            run.wall_s += time.perf_counter() - start
            for i, result in enumerate(results):
                if isinstance(result, str):
                    run.errors.append(result)
                else:
                    run.outcomes.append(result)
                    run.latency_s[first + i] = result.latency_s
            if on_burst is not None:
                on_burst(name)
    return runs


async def closed_loop(
    client: httpx.AsyncClient, call: Call, concurrency: int, k: int, requests: int
) -> tuple[ModeRun, float]:
    """``requests`` calls kept ``concurrency`` in flight until the last; (run, wall seconds)."""
    run = ModeRun()
    counter = iter(range(requests))

    async def worker() -> None:
        for i in counter:  # workers share the iterator, so each number is taken once
            result = await _one(call, client, k, i)
            if isinstance(result, str):
                run.errors.append(result)
            else:
                run.outcomes.append(result)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    run.wall_s = time.perf_counter() - start
    return run, run.wall_s
