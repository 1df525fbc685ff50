"""The targeted measurements besides the grid, and the verdict on every target.

- service RSS: the bestofk process and its children (sandboxes), sampled in a thread;
- ``GET /health`` latency, probed from another process while unit_tests load runs;
- early exit against none, on a request where about half the candidates pass;
- verification overlap and overheads, read off the grid's cells.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import statistics
import sys
import threading
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from bestofk.tooling.bench.load import closed_loop, percentile, ratio
from bestofk.tooling.bench.modes import Call, Modes, Outcome


def stat_fields(pid: int) -> list[str] | None:
    """``/proc/PID/stat`` from field 3 (state) on, so field N is at index N - 3; None once the
    process is gone. The command name (field 2) may hold spaces and parentheses: it is cut."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and (fields := stat_fields(int(entry.name))) is not None:
            tree.setdefault(int(fields[1]), []).append(int(entry.name))  # field 4: the ppid
    return tree


def _rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0  # exited, or a kernel thread without memory of its own


def tree_rss_mb(pid: int, exclude: frozenset[int] = frozenset()) -> float:
    """VmRSS of ``pid`` and all its descendants, except the trees rooted at ``exclude``.

    Shared pages count once per process, so this overstates the true footprint a little.
    """
    if pid in exclude:
        return 0.0
    return sum(_rss_kib(p) for p in [pid, *descendants(pid, exclude)]) / 1024


def descendants(pid: int, exclude: frozenset[int] = frozenset()) -> list[int]:
    """Every live descendant of ``pid``, except the trees rooted at ``exclude``."""
    tree = _children()
    out, todo = [], list(tree.get(pid, ()))
    while todo:
        current = todo.pop()
        if current in exclude:
            continue
        out.append(current)
        todo.extend(tree.get(current, ()))
    return out


class RssSampler:
    """Samples a process tree's RSS every ``interval_s`` in a thread; keeps the peak per label."""

    def __init__(self, pid: int, exclude: frozenset[int] = frozenset(), interval_s: float = 0.25):
        self.pid = pid
        self.exclude = exclude
        self.interval_s = interval_s
        self.label = "idle"
        self.peaks: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            rss = tree_rss_mb(self.pid, self.exclude)
            self.peaks[self.label] = max(self.peaks.get(self.label, 0.0), rss)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @contextlib.contextmanager
    def labelled(self, label: str) -> Iterator[None]:
        """Attribute samples taken inside the block to ``label``."""
        previous, self.label = self.label, label
        try:
            yield
        finally:
            self.label = previous


@dataclass(slots=True)
class HealthFigures:
    """``GET /health`` latency under load, and the load's own figures."""

    probes: int
    failures: dict[str, int]
    """Answers other than 200, by status (503: the service saw no healthy backend)."""
    p50_ms: float
    p99_ms: float
    max_ms: float
    load_requests: int
    load_errors: int
    load_first_errors: list[str]
    load_wall_s: float
    loop_cpu_share: float | None = None
    """CPU time of the service's event-loop thread over the phase's wall time."""
    loop_runqueue_wait_ms: float | None = None
    """Mean wait of that thread in the kernel's run queue each time it became runnable: time
    it was ready to answer but the machine had no core for it (not the loop's fault)."""
    loadavg: str = ""
    probe_delay_p99_ms: float = math.nan
    """p99 of how late the probe's own pauses ended: the machine's scheduling delay, which a
    probe's latency includes too."""


def _schedstat(pid: int) -> tuple[int, int, int] | None:
    """(ns on CPU, ns waiting to run, time slices) of ``pid``'s main thread (the loop)."""
    try:
        cpu, wait, slices = Path(f"/proc/{pid}/task/{pid}/schedstat").read_text().split()
    except (OSError, ValueError):
        return None
    return int(cpu), int(wait), int(slices)


async def health_under_load(
    client: httpx.AsyncClient,
    health_url: str,
    call: Call,
    concurrency: int,
    k: int,
    requests: int,
    service_pid: int | None = None,
) -> HealthFigures:
    """Probe ``health_url`` from another process while ``requests`` calls run at
    ``concurrency``; with ``service_pid``, also how the service's loop thread was scheduled."""
    probe = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bestofk.tooling.bench.pinger",
        health_url,
        stdout=asyncio.subprocess.PIPE,
    )
    before = _schedstat(service_pid) if service_pid else None
    try:
        run, wall = await closed_loop(client, call, concurrency, k, requests)
    finally:
        probe.terminate()
        out, _ = await probe.communicate()
    after = _schedstat(service_pid) if service_pid else None
    data = json.loads(out or b'{"latencies_ms": [], "failures": {}}')
    latencies: list[float] = data["latencies_ms"]
    cpu_share = wait_ms = None
    if before and after:
        cpu_share = (after[0] - before[0]) / 1e9 / wall
        wait_ms = (after[1] - before[1]) / 1e6 / max(1, after[2] - before[2])
    return HealthFigures(
        loop_cpu_share=cpu_share,
        loop_runqueue_wait_ms=wait_ms,
        loadavg=" ".join(f"{x:.1f}" for x in os.getloadavg()),
        probe_delay_p99_ms=percentile(data.get("overshoot_ms", []), 99),
        probes=len(latencies),
        failures=dict(data["failures"]),
        p50_ms=percentile(latencies, 50),
        p99_ms=percentile(latencies, 99),
        max_ms=max(latencies, default=math.nan),
        load_requests=len(run.outcomes),
        load_errors=len(run.errors),
        load_first_errors=sorted(set(run.errors))[:3],
        load_wall_s=wall,
    )


@dataclass(slots=True)
class EarlyExitFigures:
    """The same request with and without early exit, interleaved pair by pair."""

    k: int
    pairs: int
    pass_share: float
    """Share of candidates passing without early exit: the "about half" of the target."""
    exited_share: float
    """Share of early-exit requests that actually exited early."""
    tokens_without: float
    """Mean ``usage.completion_tokens`` per request without early exit."""
    tokens_with: float
    engine_tokens_without: float
    """Mean tokens the engine generated per request (its ``vllm:generation_tokens_total``),
    counting what an aborted candidate generated after its last streamed delta."""
    engine_tokens_with: float
    p50_ms_without: float
    p50_ms_with: float
    errors: list[str]

    def fall(self, without: float, with_: float) -> float | None:
        """1 - with / without: the share saved."""
        r = ratio(with_, without)
        return None if r is None else 1 - r


SETTLE_S = 0.3
"""After a request, time for the engine to act on the abort before its counter is read."""


async def engine_generated_tokens(client: httpx.AsyncClient, metrics_url: str) -> float:
    """``vllm:generation_tokens_total`` at ``metrics_url``, summed over its label sets (vLLM's
    server exports it, and so does a bestofk over its in-process engine)."""
    reply = await client.get(metrics_url)
    reply.raise_for_status()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in reply.text.splitlines()
        if line.startswith("vllm:generation_tokens_total")
    )


async def early_exit(
    client: httpx.AsyncClient, modes: Modes, service: str, engine_metrics: str, k: int, pairs: int
) -> EarlyExitFigures:
    """``pairs`` requests each way to the bestofk at ``service``, one at a time, alternating
    which goes first. Nothing else runs meanwhile, so the engine's token counter (at
    ``engine_metrics``) tells each request's true cost."""
    runs: dict[bool, list[tuple[Outcome, float]]] = {False: [], True: []}
    errors: list[str] = []
    task = modes.w.early_exit_task
    if task is None:
        raise ValueError("the workload has no early-exit task")
    counter = await engine_generated_tokens(client, engine_metrics)
    for i in range(pairs):
        for flag in (i % 2 == 0, i % 2 == 1):
            try:
                outcome = await modes.generate(
                    client,
                    task.prompt,
                    k,
                    task.verifiers,
                    modes.w.early_exit_max_tokens,
                    early_exit=flag,
                    url=service,
                    # Both sides of a pair sample the same candidates when the workload is
                    # seeded: the difference is then the exit alone.
                    seed=modes.w.seed(i),
                )
            except Exception as exc:  # recorded and reported, never fatal to the run
                errors.append(f"{type(exc).__name__}: {exc}"[:300])
                continue
            finally:
                await asyncio.sleep(SETTLE_S)
                before, counter = counter, await engine_generated_tokens(client, engine_metrics)
            runs[flag].append((outcome, counter - before))

    def mean(values: list[float]) -> float:
        return statistics.fmean(values) if values else math.nan

    without, with_ = runs[False], runs[True]
    generated = sum(o.body["stats"]["generated"] for o, _ in without if o.body)
    passing = sum(o.body["stats"]["passing"] for o, _ in without if o.body)
    exited = sum(bool(o.body and o.body["stats"]["early_exit"]) for o, _ in with_)
    return EarlyExitFigures(
        k=k,
        pairs=pairs,
        pass_share=passing / generated if generated else math.nan,
        exited_share=exited / len(with_) if with_ else math.nan,
        tokens_without=mean([o.body["usage"]["completion_tokens"] for o, _ in without if o.body]),
        tokens_with=mean([o.body["usage"]["completion_tokens"] for o, _ in with_ if o.body]),
        engine_tokens_without=mean([t for _, t in without]),
        engine_tokens_with=mean([t for _, t in with_]),
        p50_ms_without=percentile([o.latency_s * 1000 for o, _ in without], 50),
        p50_ms_with=percentile([o.latency_s * 1000 for o, _ in with_], 50),
        errors=sorted(set(errors))[:3],
    )


def overlap(outcomes: list[Outcome]) -> dict[str, float]:
    """From unit_tests responses: median total, median generation time, median verdict
    latency (one candidate's verification), and the bound generate + 1.5 x verification."""
    totals, generate, verdicts = [], [], []
    for o in outcomes:
        if not o.body:
            continue
        totals.append(o.body["timing"]["total_ms"])
        generate.append(o.body["timing"]["generate_ms"])
        verdicts += [
            v["latency_ms"]
            for c in o.body.get("candidates") or ()
            for v in c["verdicts"]
            if v["verifier"] == "unit_tests"
        ]
    if not totals or not verdicts:
        return {}
    one = statistics.median(verdicts)
    out = {
        "total_ms": statistics.median(totals),
        "generate_ms": statistics.median(generate),
        "verify_one_ms": one,
        "verify_one_min_ms": min(verdicts),
    }
    out["bound_ms"] = out["generate_ms"] + 1.5 * one
    return out


@dataclass(slots=True)
class Target:
    """One target: what it asks, the figure reached, and whether that meets it."""

    name: str
    target: str
    value: str
    met: bool | None
    """None when it could not be measured (a mode skipped or failing)."""
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        """A plain dict."""
        return asdict(self)


Cells = dict[tuple[int, int], dict[str, Any]]
"""(concurrency, K) → {"modes": {mode: summary}, "overlap": {...}, "rss_peak_mb": float}."""


def _fmt(value: float | None, spec: str = ".2f") -> str:
    return "n/a" if value is None or math.isnan(value) else format(value, spec)


def _pct(fall: float | None) -> str:
    """A fall as a signed change: 0.35 -> "-35%"."""
    return "n/a" if fall is None else f"{-fall * 100:+.0f}%"


def _pair(
    cells: Cells, c: int, k: int, mode: str, base: str, field: str
) -> tuple[float, float] | None:
    """``field`` of ``mode`` and of ``base`` in cell (c, k), or None if either is missing."""
    modes = cells.get((c, k), {}).get("modes", {})
    if mode not in modes or base not in modes or modes[mode]["ok"] == 0:
        return None
    return modes[mode][field], modes[base][field]


def _mode_ratio(cells: Cells, c: int, k: int, mode: str, base: str, field: str) -> float | None:
    pair = _pair(cells, c, k, mode, base, field)
    return None if pair is None else ratio(*pair)


def _paired(cells: Cells, c: int, k: int, mode: str) -> float | None:
    """The mode's median paired ratio to (b) in cell (c, k) (:func:`load.paired_ratio`)."""
    cell = cells.get((c, k))
    summary = cell["modes"].get(mode) if cell else None
    return summary["vs_b"].get("paired_p50") if summary else None


def _mode_difference(
    cells: Cells, c: int, k: int, mode: str, base: str, field: str
) -> float | None:
    pair = _pair(cells, c, k, mode, base, field)
    return None if pair is None else pair[0] - pair[1]


def _all_met(values: dict[int, float | None], ok: Any) -> bool | None:
    if not values or any(v is None for v in values.values()):
        return None
    return all(ok(v) for v in values.values())


TOPOLOGIES = {"c": "proxy", "i": "in-process"}
"""The bestofk regex modes and how each reaches its engine."""


def _early_exit_target(topology: str, early: EarlyExitFigures | None) -> Target:
    name = f"early exit ({topology})"
    wanted = "generated tokens fall >= 30% and latency falls (about half the candidates pass)"
    if early is None:
        return Target(name, wanted, "n/a", None)
    engine = early.fall(early.engine_tokens_without, early.engine_tokens_with)
    usage = early.fall(early.tokens_without, early.tokens_with)
    latency = early.fall(early.p50_ms_without, early.p50_ms_with)
    return Target(
        name,
        wanted,
        f"engine tokens {_pct(engine)}, p50 latency {_pct(latency)}",
        None if engine is None or latency is None else engine >= 0.3 and latency > 0,
        f"K={early.k}, {early.pairs} pairs, {_fmt(early.pass_share * 100, '.0f')}% of "
        f"candidates pass; engine tokens/request {_fmt(early.engine_tokens_without, '.1f')}"
        f" -> {_fmt(early.engine_tokens_with, '.1f')}; usage.completion_tokens "
        f"{_fmt(early.tokens_without, '.1f')} -> {_fmt(early.tokens_with, '.1f')} "
        f"({_pct(usage)}); p50 {_fmt(early.p50_ms_without, '.0f')} -> "
        f"{_fmt(early.p50_ms_with, '.0f')} ms; exited early in "
        f"{_fmt(early.exited_share * 100, '.0f')}%",
    )


def evaluate(
    cells: Cells,
    ks: list[int],
    early: Mapping[str, EarlyExitFigures],
    overlap_local: Mapping[str, float] | None,
    health: HealthFigures | None,
    rss_at_32_mb: float | None,
) -> list[Target]:
    """Every target of the issue, with the figure that meets or misses it; the overhead and
    early-exit targets once per topology (``early`` is keyed by :data:`TOPOLOGIES` values)."""
    targets = []
    for mode, topology in TOPOLOGIES.items():
        lat = {k: _mode_ratio(cells, 1, k, mode, "b", "p50_ms") for k in ks}
        ms = {k: _mode_difference(cells, 1, k, mode, "b", "p50_ms") for k in ks}
        added = ", ".join(f"K={k}: {_fmt(v, '+.1f')} ms" for k, v in ms.items())
        paired = ", ".join(f"K={k}: {_fmt(_paired(cells, 1, k, mode))}" for k in ks)
        targets.append(
            Target(
                f"service overhead, latency ({topology})",
                f"({mode})/(b) p50 latency <= 1.05 at concurrency 1",
                ", ".join(f"K={k}: {_fmt(v)}" for k, v in lat.items()),
                _all_met(lat, lambda v: v <= 1.05),
                f"p50 difference: {added}; paired ratio: {paired}",
            )
        )
    for mode, topology in TOPOLOGIES.items():
        thr = {k: _mode_ratio(cells, 8, k, mode, "b", "requests_per_s") for k in ks}
        targets.append(
            Target(
                f"service overhead, throughput ({topology})",
                f"({mode})/(b) requests/s >= 0.9 at concurrency 8",
                ", ".join(f"K={k}: {_fmt(v)}" for k, v in thr.items()),
                _all_met(thr, lambda v: v >= 0.9),
            )
        )
    seq = _mode_ratio(cells, 1, 8, "e", "c", "p50_ms")
    others = {c: _mode_ratio(cells, c, 8, "e", "c", "p50_ms") for c, k in cells if k == 8}
    local = _mode_ratio(cells, 1, 8, "e", "i", "p50_ms")
    targets.append(
        Target(
            "one n=K call against K sequential calls",
            "(e)/(c) p50 latency >= 4 at K=8 (concurrency 1)",
            _fmt(seq),
            None if seq is None else seq >= 4,
            f"(e)/(i): {_fmt(local)}; (e)/(c) at K=8 by concurrency: "
            + ", ".join(f"c={c}: {_fmt(v)}" for c, v in sorted(others.items())),
        )
    )
    wanted = "unit_tests: median total <= median generate + 1.5 x median verdict latency"
    for topology, overlaps, where in (
        ("proxy", {k: cells.get((1, k), {}).get("overlap") or None for k in ks}, "grid mode (d)"),
        ("in-process", {8: overlap_local or None}, "best-of-8 requests one at a time"),
    ):
        targets.append(
            Target(
                f"verification overlaps generation ({topology})",
                f"{wanted} (concurrency 1)",
                ", ".join(
                    f"K={k}: {_fmt(o['total_ms'], '.0f')} vs {_fmt(o['bound_ms'], '.0f')} ms"
                    if o
                    else f"K={k}: n/a"
                    for k, o in overlaps.items()
                ),
                _all_met(
                    {
                        k: None if o is None else o["total_ms"] - o["bound_ms"]
                        for k, o in overlaps.items()
                    },
                    lambda v: v <= 0,
                ),
                where,
            )
        )
    for topology in TOPOLOGIES.values():
        targets.append(_early_exit_target(topology, early.get(topology)))
    targets.append(
        Target(
            "free event loop",
            "GET /health p99 <= 50 ms during 32 concurrent best-of-8 unit_tests",
            "n/a" if health is None else f"p99 {_fmt(health.p99_ms, '.1f')} ms",
            None if health is None or not health.probes else health.p99_ms <= 50,
            ""
            if health is None
            else f"{health.probes} probes (p50 {_fmt(health.p50_ms, '.1f')}, max "
            f"{_fmt(health.max_ms, '.1f')} ms), not 200: {health.failures or 'none'}; load: "
            f"{health.load_requests} ok, {health.load_errors} errors in "
            f"{health.load_wall_s:.1f} s; the loop thread used {_fmt(health.loop_cpu_share)} of "
            f"a core and waited {_fmt(health.loop_runqueue_wait_ms, '.1f')} ms for a core per "
            f"wake-up; the probe's own sleeps overran by {_fmt(health.probe_delay_p99_ms, '.1f')}"
            f" ms at p99; load average {health.loadavg}",
        )
    )
    targets.append(
        Target(
            "memory",
            "service RSS (engine excluded) <= 300 MB at concurrency 32",
            "n/a" if rss_at_32_mb is None else f"peak {rss_at_32_mb:.0f} MB",
            None if rss_at_32_mb is None else rss_at_32_mb <= 300,
            "the bestofk process and its sandboxes, summed VmRSS",
        )
    )
    return targets
