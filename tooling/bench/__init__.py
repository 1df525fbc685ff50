"""``bestofk bench``: bestofk side by side with direct vLLM and the naive approaches.

One vLLM backend serves every mode but (i), whose bestofk runs an in-process engine built
like it (:mod:`bestofk.tooling.bench.modes`); the grid
(:mod:`bestofk.tooling.bench.load`) interleaves the modes within each (concurrency, K) cell; the
target phases (:mod:`bestofk.tooling.bench.targets`) measure early exit, the event loop under load
and the service's memory; :mod:`bestofk.tooling.bench.report` writes JSON, markdown and a plot.

:func:`measure` runs against servers that are already up (the tests use it);
:func:`run` starts them first (:mod:`bestofk.tooling.bench.stack`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import httpx

from bestofk.tooling.bench import cpu, load, targets
from bestofk.tooling.bench.modes import (
    ALL_MODES,
    ENGINE_SWITCH_PAUSE_S,
    MODE_LABELS,
    Endpoints,
    Modes,
    load_tasks,
    workload,
)
from bestofk.tooling.bench.report import Report
from bestofk.tooling.bench.stack import logs_dir, started
from bestofk.tooling.procs import ROOT

DEMO_TASKS = Path(__file__).resolve().parents[2] / "demo" / "tasks.jsonl"


@dataclass(frozen=True, slots=True)
class BenchConfig:
    """What to measure."""

    concurrency: Sequence[int] = (1, 8, 32)
    ks: Sequence[int] = (4, 8, 16)
    requests: int = 8
    """Requests per mode per cell; a cell runs at least ``min_rounds`` full bursts."""
    min_rounds: int = 2
    """Bursts per mode per cell at least: with one, a load spike on the machine during one
    mode's only burst would pass for that mode's cost (the rotation needs rounds to work)."""
    big_cell_requests: int | None = None
    """At most this many per mode in cells of concurrency x K >= 256 (slow on a CPU)."""
    modes: Sequence[str] = ALL_MODES
    workload: str = "code"
    """``code`` (the demo's code tasks, ~40-token answers) or ``short`` (2-3 token answers)."""
    tie_break: str | None = None
    """bestofk's ``selection.tie_break`` in its modes (``logprob``: the engine computes every
    sampled token's logprob); None sends none, so the server's default applies."""
    tasks: Path = DEMO_TASKS
    targets: bool = True
    """Also run the early-exit, /health and memory phases."""
    early_exit_pairs: int = 16
    overlap_requests: int = 12
    """Best-of-8 unit_tests requests, one at a time, for the in-process overlap figure."""
    health_requests: int = 64
    """32 concurrent best-of-8 unit_tests requests, this many in all, while /health is probed."""
    port: int | None = None
    """The servers listen on consecutive ports from this one; None: free ports."""
    cpu_ks: Sequence[int] = (1, 8, 32)
    cpu_requests: int = 200
    """Requests per cell of the CPU table (one at a time, against an instant backend)."""

    def cell_requests(self, concurrency: int, k: int) -> int:
        """How many requests each mode makes in the cell (concurrency, k)."""
        n = max(self.requests, self.min_rounds * concurrency)
        if self.big_cell_requests is not None and concurrency * k >= 256:
            n = max(min(n, self.big_cell_requests), concurrency)
        return n


Log = Callable[[str], None]


def shown_path(path: str | Path) -> str:
    """A path as the committed results show it: relative to the checkout when inside it (a
    table names ``demo/model``, not the machine's absolute path), else as given (a hub id)."""
    resolved = Path(path).resolve()
    if resolved.exists() and resolved.is_relative_to(ROOT):
        return str(resolved.relative_to(ROOT))
    return str(path)


def _environment(model: str) -> dict[str, Any]:
    return {
        "model": shown_path(model),
        "cpus": os.cpu_count(),
        "loadavg_start": " ".join(f"{x:.1f}" for x in os.getloadavg()),
        "python": platform.python_version(),
        "machine": platform.machine(),
    }


async def _warm_up(
    client: httpx.AsyncClient, modes: Modes, names: Sequence[str], ks: Sequence[int], log: Log
) -> dict[str, str]:
    """Untimed requests, one per mode and K (an engine's first requests of each shape are
    slow); modes that fail here are skipped with the reason, so one broken mode cannot sink
    the run."""
    skipped = {}
    for name in names:
        try:
            for i, k in enumerate(ks):
                await modes.call(name)(client, k, i)
        except Exception as exc:  # any failure: report the mode as skipped, with why
            skipped[name] = f"warm-up failed: {type(exc).__name__}: {exc}"[:600]
            log(f"({name}) {MODE_LABELS[name]} skipped: {skipped[name]}")
    return skipped


async def measure(
    endpoints: Endpoints,
    config: BenchConfig,
    bestofk_pid: int | None = None,
    skipped: dict[str, str] | None = None,
    model: str = "",
    log: Log = print,
) -> Report:
    """Run the grid (and the target phases) against running servers."""
    skipped = dict(skipped or {})
    if endpoints.bestofk_local is None:
        skipped.setdefault("i", "no in-process bestofk was started")
    if endpoints.bestofk_split is None and "n" in config.modes:
        skipped.setdefault("n", "no bestofk with split_candidates on was started")
    if endpoints.bestofk_local_joint is None and "m" in config.modes:
        skipped.setdefault("m", "no in-process bestofk with split_candidates off was started")
    chosen = workload(
        config.workload,
        config.tasks,
        # Summaries: the compliant ones (one or two sentences) are the short ones, so early
        # exit has longer candidates to cut off; about half comply.
        early_exit_task=load_tasks(config.tasks, "summary")[0] if config.targets else None,
        tie_break=config.tie_break,
    )
    modes = Modes(endpoints, chosen)
    # Concurrency-1 cells and the early-exit pairs are seeded, so every mode (and both sides
    # of a pair) samples the same completions and a ratio prices the route alone. Not the
    # busier cells: the CPU build crashed once on a seeded request in a chunked prefill, and
    # there the many requests average the draws out anyway.
    seeded = Modes(endpoints, replace(chosen, seeded=True))
    wanted = [m for m in ALL_MODES if m in config.modes and m not in skipped]
    # The servers (uvicorn) close idle connections after 5 s, and other modes' bursts can last
    # longer: expire ours first, or a request can go out on a connection as it is closed.
    limits = httpx.Limits(
        max_connections=None, max_keepalive_connections=1024, keepalive_expiry=2.0
    )
    async with httpx.AsyncClient(timeout=900, limits=limits) as client:
        skipped |= await _warm_up(client, seeded, wanted, config.ks, log)
        names = [m for m in wanted if m not in skipped]
        sampler = targets.RssSampler(bestofk_pid) if bestofk_pid else None
        report = Report(
            config=_config_json(config),
            environment=_environment(model),
            cells={},
            modes=names,
            skipped=skipped,
        )
        with sampler or contextlib.nullcontext():
            for c in config.concurrency:
                for k in config.ks:
                    n = config.cell_requests(c, k)
                    log(f"cell concurrency={c} K={k}: {n} requests x {len(names)} modes")
                    label = f"c={c} k={k}"
                    calls = {name: (seeded if c == 1 else modes).call(name) for name in names}
                    with sampler.labelled(label) if sampler else contextlib.nullcontext():
                        runs = await load.run_cell(client, calls, c, k, n)
                    summaries = load.summaries(runs, seeded=c == 1)
                    cell: dict[str, Any] = {"requests": n, "modes": summaries}
                    if "d" in runs:
                        cell["overlap"] = targets.overlap(runs["d"].outcomes)
                    if sampler:
                        cell["rss_peak_mb"] = sampler.peaks.get(label)
                    report.cells[(c, k)] = cell
            if config.targets:
                await _target_phases(
                    client, modes, seeded, endpoints, config, report, sampler, bestofk_pid, log
                )
        if sampler:
            report.rss_peaks_mb = dict(sampler.peaks)
    rss_32 = [v for label, v in report.rss_peaks_mb.items() if label.startswith("c=32 ")]
    if report.health is not None and "health" in report.rss_peaks_mb:
        rss_32.append(report.rss_peaks_mb["health"])
    report.targets = targets.evaluate(
        report.cells,
        list(config.ks),
        report.early_exit,
        report.overlap_local,
        report.health,
        max(rss_32, default=None),
    )
    return report


async def _target_phases(
    client: httpx.AsyncClient,
    modes: Modes,
    seeded: Modes,
    endpoints: Endpoints,
    config: BenchConfig,
    report: Report,
    sampler: targets.RssSampler | None,
    bestofk_pid: int | None,
    log: Log,
) -> None:
    services = {"proxy": (endpoints.bestofk, endpoints.vllm + "/metrics")}
    if endpoints.bestofk_local is not None:
        # Its /metrics carries the in-process engine's own vllm:* counters.
        services["in-process"] = (endpoints.bestofk_local, endpoints.bestofk_local + "/metrics")
        log(f"verification overlap (in-process): {config.overlap_requests} best-of-8 unit_tests")
        await asyncio.sleep(ENGINE_SWITCH_PAUSE_S)
        run, _ = await load.closed_loop(
            client, seeded.unit_tests_local, 1, 8, config.overlap_requests
        )
        report.overlap_local = targets.overlap(run.outcomes)
    for topology, (service, engine_metrics) in services.items():
        log(f"early exit ({topology}): {config.early_exit_pairs} pairs at K=8")
        await asyncio.sleep(ENGINE_SWITCH_PAUSE_S)
        report.early_exit[topology] = await targets.early_exit(
            client, seeded, service, engine_metrics, 8, config.early_exit_pairs
        )
    log(f"/health under 32 concurrent best-of-8 unit_tests ({config.health_requests} requests)")
    await asyncio.sleep(ENGINE_SWITCH_PAUSE_S)
    with sampler.labelled("health") if sampler else contextlib.nullcontext():
        report.health = await targets.health_under_load(
            client,
            endpoints.bestofk + "/health",
            modes.call("d"),
            32,
            8,
            config.health_requests,
            service_pid=bestofk_pid,
        )


def _config_json(config: BenchConfig) -> dict[str, Any]:
    out = asdict(config)
    out["tasks"] = shown_path(config.tasks)
    out["concurrency"] = list(config.concurrency)
    out["ks"] = list(config.ks)
    out["modes"] = list(config.modes)
    return out


def run(model: str, config: BenchConfig, logs: Path | None = None, log: Log = print) -> Report:
    """Start vLLM, bestofk over it, bestofk in-process (and OptiLLM when installed), measure,
    stop them all."""
    directory = logs_dir(logs)
    log(f"CPU per request against an instant backend: K={list(config.cpu_ks)}")
    cpu_rows = cpu.run(config.cpu_ks, config.cpu_requests, directory)
    optillm_ks = list(config.ks) if "g" in config.modes else []
    local = "i" in config.modes or config.targets
    with started(
        model,
        directory,
        optillm_ks,
        local=local,
        log=log,
        port=config.port,
        split="n" in config.modes,
        local_joint="m" in config.modes,
    ) as stack:
        report = asyncio.run(
            measure(
                stack.endpoints,
                config,
                bestofk_pid=stack.bestofk_pid,
                skipped=stack.skipped,
                model=model,
                log=log,
            )
        )
    report.environment["logs"] = str(directory)
    report.cpu = cpu_rows
    return report


__all__ = ["BenchConfig", "Endpoints", "Report", "measure", "run"]
