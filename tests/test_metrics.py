"""/metrics against real servers: every metric DESIGN.md lists, the dashboard's queries answered
by a real Prometheus scraping the session server, and exact totals over several workers."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from bestofk.tooling.procs import ROOT, Server, engine_env, free_port, start, start_bestofk
from tests.conftest import CONFIG
from tests.deploy_tools import DEPLOY, dashboard_queries, metric_names, tool

PROMPT = "What's the factorial of 5? (Respond with a number only)"
SCORING = [
    {"type": "regex", "pattern": r"\d"},
    {"type": "style", "max_chars": 12},
    {"type": "exact", "reference": "120"},
]
# Sampling stops on common characters, so candidates finish at different times and the first
# one done (which passes the always-true required check) ends generation early.
EARLY_EXIT = {
    "prompt": PROMPT,
    "k": 8,
    "sampling": {"max_tokens": 32, "stop": [" ", "e", "a", "1", "\n"]},
    "verifiers": [{"type": "regex", "pattern": "^", "required": True}],
    "early_exit": {"min_score": 1.0},
}
UNIT_TESTS = {
    "prompt": "Write f(x) that doubles x.",
    "candidates": ["def f(x):\n    return 2 * x\n", "def f(x):\n    return x\n"],
    "verifiers": [
        {"type": "unit_tests", "entry_point": "f", "cases": [{"args": [2], "expected": 4}]}
    ],
}
GOOD: list[tuple[str, dict[str, Any]]] = [
    *[("/generate", {"prompt": PROMPT, "k": 4, "sampling": {"max_tokens": 16},
                     "verifiers": SCORING})] * 3,
    *[("/generate", EARLY_EXIT)] * 3,
    ("/generate", {"prompt": PROMPT, "profile": "digits", "sampling": {"max_tokens": 8}}),
    *[("/verify", {"prompt": PROMPT, "candidates": ["120", "5", "x"], "verifiers": SCORING})] * 4,
    ("/verify", UNIT_TESTS),
]  # fmt: skip
BAD: list[tuple[str, Any]] = [
    ("/generate", {"prompt": "x", "k": 0}),
    ("/generate", {"prompt": "x", "verifiers": [{"type": "nope"}]}),
    ("/verify", {"prompt": "x", "candidates": []}),
    ("/generate", "{not json"),
    ("/no-such-endpoint", {}),
]

Samples = dict[str, list[tuple[dict[str, str], float]]]
"""Sample name -> [(labels, value)], as scraped."""

# DESIGN.md's metrics section: sample name -> label names.
DESIGN_METRICS = {
    "bestofk_requests_total": {"endpoint", "code"},
    "bestofk_request_duration_seconds_bucket": {"endpoint", "le"},
    "bestofk_generation_duration_seconds_bucket": {"le"},
    "bestofk_verification_duration_seconds_bucket": {"verifier", "le"},
    "bestofk_candidates_total": set(),
    "bestofk_verdicts_total": {"verifier", "outcome"},
    "bestofk_selected_score_bucket": {"le"},
    "bestofk_k_bucket": {"le"},
    "bestofk_requests_with_passing_candidate_total": set(),
    "bestofk_first_candidate_passed_total": set(),
    "bestofk_early_exits_total": set(),
    "bestofk_inflight_requests": set(),
    "bestofk_sandbox_runs_total": {"outcome"},
    "bestofk_prompt_tokens_total": set(),
    "bestofk_generated_tokens_total": set(),
    "bestofk_stage_duration_seconds_bucket": {"stage", "le"},
    "bestofk_reranked_requests_total": set(),
    "bestofk_backend_up": {"backend"},
    "bestofk_records_healthy": {"directory"},
    # The in-process engine's own metrics, on the same endpoint.
    "vllm:num_requests_running": {"model_name", "engine"},
    "vllm:num_requests_waiting": {"model_name", "engine"},
    "vllm:kv_cache_usage_perc": {"model_name", "engine"},
    "vllm:time_to_first_token_seconds_bucket": {"model_name", "engine", "le"},
}


def send(server: Server, path: str, body: Any) -> int:
    """One request on a fresh connection (so several workers share the load); its status."""
    if isinstance(body, str):
        reply = httpx.post(
            server.url + path,
            content=body,
            headers={"content-type": "application/json"},
            timeout=120,
        )
    else:
        reply = httpx.post(server.url + path, json=body, timeout=120)
    return reply.status_code


def mixed_load(server: Server) -> None:
    """Generations (scored, early exit, a profile), verifications (incl. sandboxed code) and
    bad requests, four at a time, so every labelled series the dashboard reads exists."""
    with ThreadPoolExecutor(4) as pool:
        good = list(pool.map(lambda item: send(server, *item), GOOD))
        bad = list(pool.map(lambda item: send(server, *item), BAD))
    assert good == [200] * len(GOOD), good
    assert all(400 <= code < 500 for code in bad), bad


def scrape(server: Server) -> Samples:
    """Sample name -> [(labels, value)] from the server's /metrics."""
    reply = httpx.get(server.url + "/metrics", timeout=10)
    assert reply.status_code == 200
    samples: Samples = {}
    for family in text_string_to_metric_families(reply.text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    return sum(v for got, v in samples.get(name, []) if labels.items() <= got.items())


@pytest.fixture(scope="module")
def loaded(server: Server) -> Server:
    """The session server after one mixed load."""
    mixed_load(server)
    return server


# --- /metrics ----------------------------------------------------------------------------------


def test_metrics_endpoint_has_every_design_metric(loaded: Server) -> None:
    samples = scrape(loaded)
    for name, labels in DESIGN_METRICS.items():
        assert name in samples, f"{name} missing from /metrics"
        assert {frozenset(got) for got, _ in samples[name]} == {frozenset(labels)}, name
    outcomes = {labels["outcome"] for labels, _ in samples["bestofk_sandbox_runs_total"]}
    assert outcomes == {"ok", "fail", "timeout", "memory", "killed", "error"}
    assert value(samples, "bestofk_sandbox_runs_total") > 0  # the unit_tests load ran
    stages = {labels["stage"] for labels, _ in samples["bestofk_stage_duration_seconds_bucket"]}
    assert stages == {"queue", "generate", "verify", "total"}
    verdicts = {
        (labels["verifier"], labels["outcome"]) for labels, _ in samples["bestofk_verdicts_total"]
    }
    assert {("exact", "pass"), ("exact", "fail"), ("regex", "pass")} <= verdicts
    codes = {labels["code"] for labels, _ in samples["bestofk_requests_total"]}
    assert {"200", "400", "404"} <= codes
    assert value(samples, "vllm:request_success_total") > 0
    assert value(samples, "bestofk_first_candidate_passed_total") > 0
    assert value(samples, "bestofk_requests_with_passing_candidate_total") > 0


def test_buckets_fit_the_data(loaded: Server) -> None:
    """K up to 64 has its own buckets; latencies from a millisecond to ten minutes."""
    samples = scrape(loaded)

    def bounds(name: str) -> list[float]:
        return sorted({float(labels["le"]) for labels, _ in samples[name]})

    k = bounds("bestofk_k_bucket")
    assert {1, 2, 4, 8, 16, 32, 64} <= set(k) and k[-1] == math.inf
    for name in (
        "bestofk_request_duration_seconds_bucket",
        "bestofk_stage_duration_seconds_bucket",
        "bestofk_generation_duration_seconds_bucket",
    ):
        le = bounds(name)
        assert le[0] <= 0.001 and le[-2] >= 600, name
    verifier = bounds("bestofk_verification_duration_seconds_bucket")
    assert verifier[0] <= 0.001 and verifier[-2] >= 30
    # The load's requests landed in finite buckets, not only in +Inf.
    total = [
        (labels["le"], v)
        for labels, v in samples["bestofk_stage_duration_seconds_bucket"]
        if labels["stage"] == "total"
    ]
    assert dict(total)["600.0"] == dict(total)["+Inf"] > 0


def test_every_query_names_an_exported_metric(loaded: Server) -> None:
    """Dashboard and alert queries name only samples a live server exposes (bestofk_* and the
    in-process engine's vllm:*, which vLLM's own server exports under the same names)."""
    exported = set(scrape(loaded))
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    alerts = [(r["alert"], r["expr"]) for g in rules["groups"] for r in g["rules"]]
    for title, expr in [*dashboard_queries(), *alerts]:
        unknown = metric_names(expr) - exported - {"up"}
        assert not unknown, f"{title}: {sorted(unknown)} not exported; query: {expr}"


# --- a real Prometheus --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prometheus(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Debian's Prometheus on loopback, scraping the session server every second."""
    binary = tool("prometheus")
    workdir = tmp_path_factory.mktemp("prometheus")
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {
                "job_name": "bestofk",
                "static_configs": [{"targets": [server.url.removeprefix("http://")]}],
            }
        ],
    }
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    process = start(
        [
            binary,
            f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        workdir / "prometheus.log",
        dict(os.environ),
        port,
    )
    try:
        process.wait_ready(30, path="/-/ready")
        url = process.url
        _wait_for(url, 'up{job="bestofk"} == 1', 30)
        yield url
    finally:
        process.stop()


def query(url: str, expr: str, at: float | None = None) -> list[dict[str, Any]]:
    """An instant query through Prometheus's HTTP API; fails on a parse or evaluation error."""
    params: dict[str, str | float] = {"query": expr}
    if at is not None:
        params["time"] = at
    reply = httpx.get(url + "/api/v1/query", params=params, timeout=10)
    body = reply.json()
    assert reply.status_code == 200 and body["status"] == "success", f"{expr}: {body}"
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def _finite(result: list[dict[str, Any]]) -> bool:
    return any(math.isfinite(float(series["value"][1])) for series in result)


def _wait_for(url: str, expr: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not query(url, expr):
        assert time.monotonic() < deadline, f"no data for {expr} after {timeout_s}s"
        time.sleep(0.5)


def test_prometheus_answers_every_dashboard_query(prometheus: str, server: Server) -> None:
    """After a short load, every panel's query returns a finite value from a real Prometheus."""
    mixed_load(server)
    queries = dashboard_queries()
    deadline = time.monotonic() + 30
    while True:
        empty = [(title, expr) for title, expr in queries if not _finite(query(prometheus, expr))]
        if not empty or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert not empty, "queries without data:\n" + "\n".join(f"{t}: {e}" for t, e in empty)
    # The headline numbers agree with each other: 0 <= pass@1 <= pass@K <= 1, lift = the gap.
    at = time.time()
    headline = [
        float(query(prometheus, expr, at)[0]["value"][1])
        for title, expr in queries
        if title == "pass@1, pass@K and lift over the time range"
    ]
    pass_at_1, pass_at_k, lift = headline
    assert 0 <= pass_at_1 <= pass_at_k <= 1
    assert math.isclose(lift, pass_at_k - pass_at_1, abs_tol=1e-9)


# --- several workers ----------------------------------------------------------------------------


def _seed_stale_metrics(directory: Path) -> None:
    """Files a previous run could have left: 1000 /verify requests and 5 requests in flight."""
    code = (
        "from bestofk.service.metrics import Metrics; metrics = Metrics(); "
        "[metrics.request('/verify', 200, 0.1) for _ in range(1000)]; "
        "[metrics.admitted() for _ in range(5)]"
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=ROOT, timeout=60)
    assert list(directory.glob("counter_*.db"))


def _per_worker(directory: Path, name: str, **labels: str) -> dict[int, float]:
    """``name``'s value in each worker's own counter file."""
    counts = {}
    for file in directory.glob("counter_*.db"):
        alone = directory / "alone" / file.stem
        alone.mkdir(parents=True)
        shutil.copy(file, alone)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(alone))  # type: ignore[no-untyped-call]
        total = 0.0
        for family in registry.collect():
            for sample in family.samples:
                if sample.name == name and labels.items() <= sample.labels.items():
                    total += sample.value
        counts[int(file.stem.rpartition("_")[2])] = total
        shutil.rmtree(directory / "alone")
    return counts


def _workers(directory: Path) -> set[int]:
    return {int(f.stem.rpartition("_")[2]) for f in directory.glob("gauge_livesum_*.db")}


def _wait_workers(server: Server, directory: Path, count: int, gone: int | None = None) -> None:
    """Wait until ``count`` workers other than ``gone`` have their live files. The server is
    ready as soon as one worker answers; on a loaded 2-core machine the other can start seconds
    later (a CI run saw one of two when /health first answered)."""
    deadline = time.monotonic() + 60
    while len(_workers(directory) - {gone}) < count:
        assert time.monotonic() < deadline, server.log_tail()
        time.sleep(0.5)


def test_two_workers_count_every_request_once(
    vllm_backend: Server, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """--workers 2 over the remote engine: stale files are wiped at start, counters sum over the
    workers to exactly the requests sent, and a worker that dies leaves no live gauge behind."""
    directory = tmp_path_factory.mktemp("multiproc")
    _seed_stale_metrics(directory)
    logs = tmp_path_factory.mktemp("logs")
    env = engine_env(BESTOFK_CONFIG=str(CONFIG), PROMETHEUS_MULTIPROC_DIR=str(directory))
    server = start_bestofk(
        logs / "bestofk-workers.log", "--backend", vllm_backend.url, "--workers", "2", env=env
    )
    verify = ("/verify", {"prompt": PROMPT, "candidates": ["120", "5"], "verifiers": SCORING})
    generate = ("/generate", {"prompt": PROMPT, "k": 2, "sampling": {"max_tokens": 8},
                              "verifiers": SCORING[:1]})  # fmt: skip
    try:
        server.wait_ready(90)
        _wait_workers(server, directory, 2)
        assert len(_workers(directory)) == 2, server.log_tail()
        sent = {"/verify": 0, "/generate": 0}
        # Concurrent requests on fresh connections spread over both workers; send another
        # batch in the unlikely case one worker took them all.
        for _ in range(3):
            with ThreadPoolExecutor(8) as pool:
                codes = list(pool.map(lambda item: send(server, *item), [verify] * 16))
                codes += list(pool.map(lambda item: send(server, *item), [generate] * 4))
            assert codes == [200] * 20
            sent["/verify"] += 16
            sent["/generate"] += 4
            served = _per_worker(directory, "bestofk_requests_total", endpoint="/verify")
            if sum(1 for count in served.values() if count) == 2:
                break
        assert sorted(served.values())[0] > 0, f"one worker served every request: {served}"

        def check_totals() -> None:
            # Each scrape is answered by either worker; each must give the same exact sums.
            for _ in range(4):
                samples = scrape(server)
                for endpoint, count in sent.items():
                    got = value(samples, "bestofk_requests_total", endpoint=endpoint, code="200")
                    assert got == count, (endpoint, got, count)
                requests = sent["/verify"] + sent["/generate"]
                assert value(samples, "bestofk_reranked_requests_total") == requests
                assert value(samples, "bestofk_candidates_total") == 2 * requests
                assert value(samples, "bestofk_k_count") == requests
                assert value(samples, "bestofk_verdicts_total") == 2 * (
                    3 * sent["/verify"] + sent["/generate"]
                )
                assert value(samples, "bestofk_inflight_requests") == 0

        check_totals()
        # The engine records through the app's Metrics too: both workers serve, so both see
        # their backend up (livemin: the least of the live workers' views).
        up = value(scrape(server), "bestofk_backend_up", backend=vllm_backend.url)
        assert up == 1, server.log_tail()
        # A worker that exits (uvicorn restarts it) takes its live gauges with it; its counts
        # stay in the totals.
        victim = min(_workers(directory))
        os.kill(victim, 15)
        _wait_workers(server, directory, 2, gone=victim)
        server.wait_ready(30)
        check_totals()
        assert victim not in _workers(directory)
        with ThreadPoolExecutor(4) as pool:
            assert list(pool.map(lambda item: send(server, *item), [verify] * 4)) == [200] * 4
        sent["/verify"] += 4
        check_totals()
    finally:
        server.stop()
    assert "Traceback" not in server.log.read_text(), server.log_tail()


def test_one_worker_with_a_multiprocess_dir_starts_from_zero(
    vllm_backend: Server, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """An operator's PROMETHEUS_MULTIPROC_DIR with a single worker: wiped before the metrics
    map their files there (wiping after would leave them writing to deleted files)."""
    directory = tmp_path_factory.mktemp("multiproc-one")
    _seed_stale_metrics(directory)
    log = tmp_path_factory.mktemp("logs") / "bestofk-one-worker.log"
    env = engine_env(BESTOFK_CONFIG=str(CONFIG), PROMETHEUS_MULTIPROC_DIR=str(directory))
    server = start_bestofk(log, "--backend", vllm_backend.url, env=env)
    verify = {"prompt": PROMPT, "candidates": ["120", "5"], "verifiers": SCORING}
    try:
        server.wait_ready(90)
        assert [send(server, "/verify", verify) for _ in range(3)] == [200] * 3
        samples = scrape(server)
        assert value(samples, "bestofk_requests_total", endpoint="/verify") == 3
        assert value(samples, "bestofk_candidates_total") == 6
        assert value(samples, "bestofk_inflight_requests") == 0
    finally:
        server.stop()


def test_workers_need_a_backend(tmp_path: Path) -> None:
    """Several workers over the in-process engine would each load the model: refused."""
    done = subprocess.run(
        [str(Path(sys.executable).parent / "bestofk"), "serve", "--workers", "2"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert done.returncode != 0
    assert "--backend" in done.stdout + done.stderr
