"""The benchmark's results: JSON, a markdown table, a PNG plot."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bestofk.tooling.bench import cpu
from bestofk.tooling.bench.modes import BASELINE, MODE_LABELS
from bestofk.tooling.bench.targets import Cells, EarlyExitFigures, HealthFigures, Target


@dataclass(slots=True)
class Report:
    """Everything one ``bestofk bench`` run measured."""

    config: dict[str, Any]
    environment: dict[str, Any]
    cells: Cells
    modes: list[str]
    skipped: dict[str, str] = field(default_factory=dict)
    """Mode → why it was not run."""
    early_exit: dict[str, EarlyExitFigures] = field(default_factory=dict)
    """Topology (proxy, in-process) → early exit against none."""
    overlap_local: dict[str, float] | None = None
    """Verification overlap of best-of-8 unit_tests on the in-process bestofk (concurrency 1)."""
    health: HealthFigures | None = None
    rss_peaks_mb: dict[str, float] = field(default_factory=dict)
    targets: list[Target] = field(default_factory=list)
    cpu: list[cpu.CpuRow] = field(default_factory=list)
    """CPU per request of bestofk against an instant backend (:mod:`bestofk.tooling.bench.cpu`)."""

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (NaN becomes null)."""
        cells = [{"concurrency": c, "k": k, **cell} for (c, k), cell in sorted(self.cells.items())]
        out: dict[str, Any] = _clean(
            {
                "config": self.config,
                "environment": self.environment,
                "modes": {m: MODE_LABELS[m] for m in self.modes},
                "baseline": BASELINE,
                "skipped": self.skipped,
                "cells": cells,
                "early_exit": {name: _asdict(e) for name, e in self.early_exit.items()},
                "overlap_local": self.overlap_local,
                "health": _asdict(self.health),
                "rss_peaks_mb": self.rss_peaks_mb,
                "targets": [t.to_json() for t in self.targets],
                "cpu": [asdict(row) for row in self.cpu],
            }
        )
        return out

    def markdown(self) -> str:
        """The results table, the targets, and what was skipped."""
        lines = [
            "| conc. | K | mode | ok/err | p50 ms | p95 ms | req/s | gen tok/s "
            "| p50 ÷ (b) | paired ÷ (b) | p95 ÷ (b) | req/s ÷ (b) | tok/s ÷ (b) |",
            "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for (c, k), cell in sorted(self.cells.items()):
            for mode, s in cell["modes"].items():
                r = s["vs_b"]
                lines.append(
                    f"| {c} | {k} | ({mode}) {MODE_LABELS[mode]} | {s['ok']}/{s['errors']} "
                    f"| {_num(s['p50_ms'], '.0f')} | {_num(s['p95_ms'], '.0f')} "
                    f"| {_num(s['requests_per_s'], '.2f')} | {_num(s['tokens_per_s'], '.0f')} "
                    f"| {_num(r['p50_ms'])} | {_num(r.get('paired_p50'))} | {_num(r['p95_ms'])} "
                    f"| {_num(r['requests_per_s'])} | {_num(r['tokens_per_s'])} |"
                )
        lines += ["", "| target | wanted | reached | met | detail |", "|---|---|---|---|---|"]
        for t in self.targets:
            met = {True: "yes", False: "**no**", None: "n/a"}[t.met]
            lines.append(f"| {t.name} | {t.target} | {t.value} | {met} | {t.detail} |")
        if self.cpu:
            lines += ["", "CPU per request against an instant backend:", "", cpu.markdown(self.cpu)]
        if self.skipped:
            lines.append("")
            lines += [f"- ({m}) {MODE_LABELS[m]} skipped: {why}" for m, why in self.skipped.items()]
        errors = [
            f"- c={c} K={k} ({m}): {s['errors']} errors, e.g. {s['first_errors'][0]}"
            for (c, k), cell in sorted(self.cells.items())
            for m, s in cell["modes"].items()
            if s["errors"]
        ]
        if errors:
            lines += ["", "Errors:", *errors]
        env = self.environment
        lines += [
            "",
            f"Model {env.get('model')}; {env.get('cpus')} CPUs, load average "
            f"{env.get('loadavg_start')} at start; {self.config.get('requests')} requests per "
            f"mode per cell, at least {self.config.get('min_rounds')} bursts of `concurrency`; "
            f"workload `{self.config.get('workload')}`. (d) always samples the code tasks, and "
            "(g)/(j) add a judge pass, so their ratios against (b) price the whole job. (i) "
            "runs its own in-process engine, built like the backend that serves the rest.",
        ]
        return "\n".join(lines) + "\n"

    def plot(self, path: Path) -> None:
        """p50 latency and generated tokens/s against concurrency, one column per K."""
        import matplotlib

        matplotlib.use("Agg")  # no display here; must precede pyplot
        import matplotlib.pyplot as plt

        ks = sorted({k for _, k in self.cells})
        concurrencies = sorted({c for c, _ in self.cells})
        fig, axes = plt.subplots(2, len(ks), figsize=(5 * len(ks), 8), squeeze=False)
        for col, k in enumerate(ks):
            for mode in self.modes:
                lat, tps = [], []
                for c in concurrencies:
                    s = self.cells.get((c, k), {}).get("modes", {}).get(mode)
                    lat.append(s["p50_ms"] if s and s["ok"] else math.nan)
                    tps.append(s["tokens_per_s"] if s and s["ok"] else math.nan)
                label = f"({mode}) {MODE_LABELS[mode]}"
                style = "-" if mode in ("b", "c") else "--"
                axes[0][col].plot(concurrencies, lat, style, marker="o", label=label)
                axes[1][col].plot(concurrencies, tps, style, marker="o", label=label)
            axes[0][col].set_title(f"K = {k}: p50 latency")
            axes[1][col].set_title(f"K = {k}: generated tokens/s")
            for row in (0, 1):
                axes[row][col].set_xscale("log", base=2)
                axes[row][col].set_yscale("log")
                axes[row][col].set_xticks(concurrencies, [str(c) for c in concurrencies])
                axes[row][col].set_xlabel("concurrency")
            axes[0][col].set_ylabel("ms")
            axes[1][col].set_ylabel("tokens/s")
        axes[0][-1].legend(fontsize="small")
        fig.suptitle(f"bestofk bench: {self.environment.get('model')}")
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)


def _num(value: float | None, spec: str = ".2f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def _asdict(obj: Any) -> dict[str, Any] | None:
    if obj is None:
        return None
    return {name: getattr(obj, name) for name in obj.__slots__}


def _clean(value: Any) -> Any:
    """NaN and infinities to None, recursively: JSON has no NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value
