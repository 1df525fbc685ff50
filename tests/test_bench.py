"""``bestofk bench``'s library on a tiny grid against the session's servers: the report's shape
and its ratios, never its timings (those depend on the machine)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from bestofk.tooling.bench import BenchConfig, measure, shown_path
from bestofk.tooling.bench.load import ModeRun, percentile, ratio, summaries, with_ratios
from bestofk.tooling.bench.modes import Endpoints, Outcome
from bestofk.tooling.bench.targets import tree_rss_mb
from bestofk.tooling.procs import ROOT, Server


def test_percentile_and_ratio() -> None:
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([1.0, 2.0], 50) == 1.5
    assert percentile([5.0], 99) == 5.0
    assert math.isnan(percentile([], 50))
    assert ratio(3.0, 2.0) == 1.5
    assert ratio(1.0, 0.0) is None
    assert ratio(math.nan, 1.0) is None


def test_ratios_are_against_b() -> None:
    figures = {"p50_ms": 10.0, "p95_ms": 20.0, "requests_per_s": 4.0, "tokens_per_s": 40.0}
    modes = with_ratios({"b": dict(figures), "c": {k: v * 2 for k, v in figures.items()}})
    assert modes["b"]["vs_b"] == dict.fromkeys(figures, 1.0)
    assert modes["c"]["vs_b"] == dict.fromkeys(figures, 2.0)


def test_paired_ratio_compares_the_same_request_numbers() -> None:
    def run(latencies: dict[int, float]) -> ModeRun:
        return ModeRun(
            outcomes=[Outcome(s, 10) for s in latencies.values()], wall_s=1.0, latency_s=latencies
        )

    # Every request costs 10 % more in (c), whose request 3 failed: the p50s' ratio says 0.88
    # (the medians fall on different requests), the pairs say 1.1.
    base = run({0: 1.0, 1: 2.0, 2: 3.0, 3: 9.0})
    routed = run({0: 1.1, 1: 2.2, 2: 3.3})
    figures = summaries({"b": base, "c": routed}, seeded=True)
    assert figures["c"]["vs_b"]["paired_p50"] == pytest.approx(1.1)
    assert figures["c"]["vs_b"]["p50_ms"] == pytest.approx(2.2 / 2.5)
    assert figures["b"]["vs_b"]["paired_p50"] == 1.0
    assert summaries({"c": routed}, seeded=True)["c"]["vs_b"]["paired_p50"] is None  # no (b)
    assert summaries({"b": base, "c": routed}, seeded=False)["c"]["vs_b"]["paired_p50"] is None


def test_big_cells_are_capped_but_keep_one_full_burst() -> None:
    config = BenchConfig(requests=8, min_rounds=2, big_cell_requests=4)
    assert config.cell_requests(1, 4) == 8
    assert config.cell_requests(8, 4) == 16  # two rounds
    assert config.cell_requests(32, 4) == 64  # 128 sequences: not a big cell
    assert config.cell_requests(32, 16) == 32  # capped to 4, but a burst needs 32
    assert config.cell_requests(16, 16) == 16


@pytest.mark.vllm
async def test_tiny_grid_against_the_session_servers(
    vllm_backend: Server, remote_server: Server, server: Server, tmp_path: Path
) -> None:
    config = BenchConfig(
        concurrency=[1],
        ks=[2],
        requests=2,
        modes=["a", "b", "c", "i"],
        workload="short",
        targets=False,
        min_rounds=1,
    )
    endpoints = Endpoints(
        vllm=vllm_backend.url, bestofk=remote_server.url, bestofk_local=server.url, model="demo"
    )
    report = await measure(
        endpoints,
        config,
        bestofk_pid=remote_server.process.pid,
        log=lambda _: None,
    )
    assert report.skipped == {}
    data = report.to_json()
    json.dumps(data, allow_nan=False)  # NaN would make invalid JSON
    assert [(c["concurrency"], c["k"]) for c in data["cells"]] == [(1, 2)]
    modes = data["cells"][0]["modes"]
    assert list(modes) == ["a", "b", "c", "i"]
    for summary in modes.values():
        assert summary["ok"] == 2 and summary["errors"] == 0
        assert summary["p50_ms"] > 0 and summary["p95_ms"] >= summary["p50_ms"]
        assert summary["requests_per_s"] > 0 and summary["tokens_per_s"] > 0
    b = modes["b"]
    assert b["vs_b"] == dict.fromkeys(
        ("p50_ms", "paired_p50", "p95_ms", "requests_per_s", "tokens_per_s"), 1.0
    )
    for mode in ("c", "i"):
        for name in ("p50_ms", "p95_ms", "requests_per_s", "tokens_per_s"):
            assert modes[mode]["vs_b"][name] == pytest.approx(modes[mode][name] / b[name])
        assert modes[mode]["vs_b"]["paired_p50"] > 0
        # Two candidates per request of (b), (c) and (i), one of (a).
        assert modes[mode]["tokens_per_request"] >= 2
    assert b["tokens_per_request"] >= 2

    targets = {t["name"]: t for t in data["targets"]}
    assert len(targets) == 11
    for topology in ("proxy", "in-process"):
        overhead = targets[f"service overhead, latency ({topology})"]
        assert overhead["met"] in (True, False) and "K=2: " in overhead["value"]
        assert " ms" in overhead["detail"]
        # No concurrency 8 and no early-exit phase here: not measured, so neither met nor not.
        assert targets[f"service overhead, throughput ({topology})"]["met"] is None
        assert targets[f"early exit ({topology})"]["met"] is None
    assert targets["free event loop"]["met"] is None  # the phases were not run

    table = report.markdown()
    assert "| 1 | 2 | (c) bestofk regex | 2/0 |" in table
    assert "| 1 | 2 | (i) bestofk regex, in-process | 2/0 |" in table
    plot = tmp_path / "bench.png"
    report.plot(plot)
    assert plot.read_bytes().startswith(b"\x89PNG")


@pytest.mark.vllm
def test_service_rss_counts_the_process(remote_server: Server) -> None:
    pid = remote_server.process.pid
    assert tree_rss_mb(pid) > 10
    assert tree_rss_mb(pid, exclude=frozenset({pid})) == 0
    assert tree_rss_mb(2**22 + 1) == 0  # no such process


def test_cpu_table_measures_bestofk_beside_the_direct_path(tmp_path: Path) -> None:
    out = tmp_path / "cpu.json"
    run = subprocess.run(
        [sys.executable, "-m", "bestofk.tooling.bench.cpu", "--requests", "30", "--k", "1,8",
         "--json", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert [(r["k"], r["verifiers"]) for r in rows] == [
        (k, v) for k in (1, 8) for v in ("none", "regex", "regex, tie_break logprob", "cheap")
    ]
    for row in rows:
        assert row["bestofk_ms"] > 0 and row["backend_direct_ms"] >= 0, row
        assert (row["verdict_ms"] is None) == (row["verifiers"] == "none"), row
    assert "CPU per request at K=8 with a regex verifier" in run.stdout


def test_results_name_the_model_relative_to_the_checkout() -> None:
    """Committed tables carry no machine's absolute path: the demo model is ``demo/model``."""
    assert shown_path(ROOT / "demo" / "model") == "demo/model"
    assert shown_path("Qwen/Qwen3-8B") == "Qwen/Qwen3-8B"  # a hub id stays as given
    for result in (ROOT / "bench" / "results").iterdir():
        if result.suffix in (".md", ".json"):
            text = result.read_text()
            assert str(ROOT) not in text and "/work/" not in text, result.name
            assert "Model /" not in text and '"model": "/' not in text, result.name
