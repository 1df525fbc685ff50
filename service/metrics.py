"""Every bestofk metric, defined once, and the functions that record them.

Names follow Prometheus conventions: prefix ``bestofk_``, base units, ``_total`` counters. With
several uvicorn workers, ``PROMETHEUS_MULTIPROC_DIR`` switches prometheus-client to its
multiprocess mode. That variable is read when prometheus-client is imported, so it must be set
before a worker starts; ``bestofk serve --workers N`` sets it, and empties the directory first.
Gauges then sum over live workers only (:func:`forget_dead_workers`).

The Grafana dashboard (``deploy/grafana/generate.py``) and the alert rules
(``deploy/prometheus/alerts.yml``) query these names; the tests check every query against a
live scrape, so a rename here fails there.
"""

from __future__ import annotations

import collections
import os
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

if TYPE_CHECKING:
    from bestofk.service.pipeline import RerankResult

# From 1 ms to 10 minutes: a queue wait, a /verify of regexes and a best-of-64 on a long prompt
# (the default request deadline is 300 s) all land inside the buckets, not in +Inf.
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0, 600.0,
)  # fmt: skip
# One verifier on one candidate: a regex takes microseconds, a sandboxed test suite or an LLM
# judge seconds; the verifier timeouts cap it near a minute.
VERIFIER_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
)  # fmt: skip
# K is an integer a client picks, usually a power of two or a round number, up to max_k (64 by
# default); a bucket at each common value keeps quantiles exact rather than interpolated.
K_BUCKETS = (1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32, 48, 64)
STAGES = ("queue", "generate", "verify", "total")
SANDBOX_OUTCOMES = ("ok", "fail", "timeout", "memory", "killed", "error")

REQUESTS = Counter(
    "bestofk_requests_total",
    "Requests answered, by endpoint and HTTP status.",
    ["endpoint", "code"],
)
REQUEST_DURATION = Histogram(
    "bestofk_request_duration_seconds",
    "Wall time from request arrival to response, by endpoint.",
    ["endpoint"],
    buckets=LATENCY_BUCKETS,
)
STAGE_DURATION = Histogram(
    "bestofk_stage_duration_seconds",
    "Wall time of each pipeline stage (queue, generate, verify, total).",
    ["stage"],
    buckets=LATENCY_BUCKETS,
)
GENERATION_DURATION = Histogram(
    "bestofk_generation_duration_seconds",
    "Engine time to produce all K candidates of a request.",
    buckets=LATENCY_BUCKETS,
)
VERIFICATION_DURATION = Histogram(
    "bestofk_verification_duration_seconds",
    "Time one verifier took on one candidate.",
    ["verifier"],
    buckets=VERIFIER_BUCKETS,
)
CANDIDATES = Counter("bestofk_candidates_total", "Candidates generated or given for verification.")
REASONING_TRUNCATED = Counter(
    "bestofk_reasoning_truncated_total",
    "Candidates whose thinking max_tokens cut before it ended: no answer, every answer "
    "verifier fails them.",
)
REASONING_TOKENS = Counter(
    "bestofk_reasoning_tokens_total",
    "Generated tokens spent thinking (before the answer), over every candidate.",
)
VERDICTS = Counter(
    "bestofk_verdicts_total", "Verdicts by verifier and outcome (pass/fail/error).",
    ["verifier", "outcome"],
)  # fmt: skip
SELECTED_SCORE = Histogram(
    "bestofk_selected_score",
    "Combined score of the chosen candidate.",
    buckets=(0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.99, 1.0),
)
K = Histogram("bestofk_k", "Candidates requested per request (K).", buckets=K_BUCKETS)
WITH_PASSING = Counter(
    "bestofk_requests_with_passing_candidate_total",
    "Requests where at least one candidate passed every verifier (pass@K).",
)
FIRST_PASSED = Counter(
    "bestofk_first_candidate_passed_total",
    "Requests whose first sample (index 0) passed every verifier (pass@1).",
)
RERANKED = Counter(
    "bestofk_reranked_requests_total", "Requests that ran the rerank pipeline with verifiers."
)
EARLY_EXITS = Counter(
    "bestofk_early_exits_total", "Requests whose generation was cut short by early exit."
)
LOAD_REDUCED = Counter(
    "bestofk_load_reduced_requests_total",
    "Requests given a smaller K than they asked because the engine was saturated "
    "(load-aware K; stats.k < stats.k_requested).",
)
CONFIDENCE_CUT = Counter(
    "bestofk_confidence_cut_candidates_total",
    "Candidates confidence-aware stopping cut short (their window confidence fell below the "
    "warm-up wave's threshold).",
)
INFLIGHT = Gauge(
    "bestofk_inflight_requests", "Requests being processed now.", multiprocess_mode="livesum"
)
ENGINE_RESTARTS = Counter(
    "bestofk_engine_restarts_total",
    "Times the in-process vLLM engine died and was restarted.",
)
BACKEND_UP = Gauge(
    "bestofk_backend_up",
    '1 while a backend takes requests (healthy and not ejected), else 0; backend="in-process" '
    "is the in-process engine. With several workers, the least of their views: 0 as soon as "
    "one worker cannot use it.",
    ["backend"],
    multiprocess_mode="livemin",
)
SANDBOX_RUNS = Counter(
    "bestofk_sandbox_runs_total",
    "Sandboxed code runs by outcome (ok/fail/timeout/memory/killed/error).",
    ["outcome"],
)
PROMPT_TOKENS = Counter("bestofk_prompt_tokens_total", "Prompt tokens sent to the engine.")
GENERATED_TOKENS = Counter(
    "bestofk_generated_tokens_total", "Tokens generated over all candidates, aborted ones too."
)

# Series with a known, closed label set exist from start-up at zero, so a rate() or an alert on
# them has data (and a sandbox-timeout alert can fire on its first timeout, not its second).
for _stage in STAGES:
    STAGE_DURATION.labels(_stage)
for _outcome in SANDBOX_OUTCOMES:
    SANDBOX_RUNS.labels(_outcome)


def observe(result: RerankResult) -> None:
    """Record everything one finished request says about candidates, verifiers and tokens."""
    timing = result.timing
    STAGE_DURATION.labels("queue").observe(timing.queue_ms / 1000)
    STAGE_DURATION.labels("generate").observe(timing.generate_ms / 1000)
    STAGE_DURATION.labels("verify").observe(timing.verify_ms / 1000)
    STAGE_DURATION.labels("total").observe(timing.total_ms / 1000)
    if timing.generate_ms:
        GENERATION_DURATION.observe(timing.generate_ms / 1000)
    K.observe(result.k)
    CANDIDATES.inc(len(result.candidates))
    if result.reasoning_parser is not None:
        REASONING_TRUNCATED.inc(sum(s.candidate.truncated for s in result.candidates))
        REASONING_TOKENS.inc(result.reasoning_tokens)
    # One label lookup per verifier, not per verdict: K x verifiers lookups add up per request.
    outcomes: collections.Counter[tuple[str, str]] = collections.Counter()
    latencies: dict[str, list[float]] = {}
    for scored in result.candidates:
        for verdict in scored.verdicts:
            outcome = "error" if verdict.error else ("pass" if verdict.passed else "fail")
            outcomes[verdict.verifier, outcome] += 1
            latencies.setdefault(verdict.verifier, []).append(verdict.latency_ms / 1000)
    for (verifier, outcome), count in outcomes.items():
        VERDICTS.labels(verifier, outcome).inc(count)
    for verifier, seconds in latencies.items():
        histogram = VERIFICATION_DURATION.labels(verifier)
        for value in seconds:
            histogram.observe(value)
    if any(s.verdicts for s in result.candidates):
        RERANKED.inc()
        if result.passing:
            WITH_PASSING.inc()
        if result.first_sample_passed:
            FIRST_PASSED.inc()
    SELECTED_SCORE.observe(result.chosen.score)
    if result.early_exit:
        EARLY_EXITS.inc()
    if cut := result.cut:
        CONFIDENCE_CUT.inc(cut)
    PROMPT_TOKENS.inc(result.prompt_tokens)
    GENERATED_TOKENS.inc(result.completion_tokens)


def record_sandbox_run(outcome: str) -> None:
    """Count one sandboxed code run by its outcome (one of :data:`SANDBOX_OUTCOMES`)."""
    SANDBOX_RUNS.labels(outcome if outcome in SANDBOX_OUTCOMES else "error").inc()


def forget_dead_workers(path: Path) -> None:
    """``mark_process_dead`` for every worker that has exited, so live gauges drop its value.

    ``livesum`` gauges (in-flight requests) are summed over live processes only, and a worker
    cannot reliably say it is leaving: uvicorn re-raises SIGTERM after a graceful shutdown (so
    ``atexit`` never runs), and SIGKILL or the OOM killer give no chance at all. So the reader
    checks instead, at every scrape, before summing. Counters and histograms of dead workers
    stay: their counts happened.
    """
    for file in path.glob("gauge_live*_*.db"):
        pid = file.stem.rpartition("_")[2]
        if pid.isdigit() and not _alive(int(pid)):
            multiprocess.mark_process_dead(int(pid), str(path))  # type: ignore[no-untyped-call]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def render() -> tuple[bytes, str]:
    """The exposition text for /metrics, aggregated over workers in multiprocess mode."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path:
        forget_dead_workers(Path(path))
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


# Request records (``--record-dir``, service/records/recorder.py).
RECORD_DROP_REASONS = (
    "queue_full", "closed", "no_space", "read_only", "permission", "deleted", "too_large", "error",
)  # fmt: skip
RECORDS_WRITTEN = Counter(
    "bestofk_records_written_total",
    "Request records appended to a record file that still had its name.",
)
RECORDS_DROPPED = Counter(
    "bestofk_records_dropped_total",
    "Request records not written, by reason (queue_full: the writer fell behind; closed: the "
    "recorder had stopped; no_space, read_only, permission: the write failed so; deleted: the "
    "record files were deleted as fast as they were made; too_large: a record over the "
    "readers' line cap; error: any other failure).",
    ["reason"],
)
for _reason in RECORD_DROP_REASONS:
    RECORDS_DROPPED.labels(_reason)
RECORDS_HEALTHY = Gauge(
    "bestofk_records_healthy",
    "1 while the last record write succeeded, 0 from a failed write (no space, read-only, "
    "permission...) until a write succeeds again; only with --record-dir. With several "
    "workers, the least of theirs: 0 as soon as one cannot record.",
    ["directory"],
    multiprocess_mode="livemin",
)
