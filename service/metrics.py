"""Every bestofk metric, defined once in :class:`Metrics`, the recorder an app owns.

Names follow Prometheus conventions: prefix ``bestofk_``, base units, ``_total`` counters. Each
app makes one :class:`Metrics` (``app.state.metrics``, ``Runtime.metrics``) and hands it to what
records: the engine, the request middleware, the runtime, the sandbox pool, the request
recorder. Its metrics live in a registry of its own, so two apps in one process count apart;
``/metrics`` renders that registry beside the process-wide one, which holds the in-process
engine's ``vllm:*`` metrics and the process collector's.

With several uvicorn workers, ``PROMETHEUS_MULTIPROC_DIR`` switches prometheus-client to its
multiprocess mode. That variable is read when prometheus-client is imported, so it must be set
before a worker starts; ``bestofk serve --workers N`` sets it, and empties the directory first.
Each metric maps its file there when it is created (with the app), and ``/metrics`` then sums
every worker's files; gauges over live workers only (:func:`forget_dead_workers`).

The Grafana dashboard (``deploy/grafana/generate.py``) and the alert rules
(``deploy/prometheus/alerts.yml``) query these names; the tests check every query against a
live scrape, so a rename here fails there.
"""

from __future__ import annotations

import collections
import functools
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
    from bestofk.service.rerank import RerankResult

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
SCORE_BUCKETS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.99, 1.0)
STAGES = ("queue", "generate", "verify", "total")
SANDBOX_OUTCOMES = ("ok", "fail", "timeout", "memory", "killed", "error")
RECORD_DROP_REASONS = (
    "queue_full", "closed", "no_space", "read_only", "permission", "deleted", "too_large", "error",
)  # fmt: skip


class Metrics:
    """One app's metrics and the methods that record them; thread-safe (prometheus-client's
    metrics are), so the record writer's thread and the sandbox threads record here too."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        """This app's metrics alone (the process-wide ones are rendered beside them)."""
        # Every metric below registers here; the partials say so once.
        counter = functools.partial(Counter, registry=self.registry)
        gauge = functools.partial(Gauge, registry=self.registry)
        histogram = functools.partial(Histogram, registry=self.registry)
        self._requests = counter(
            "bestofk_requests_total",
            "Requests answered, by endpoint and HTTP status.",
            ["endpoint", "code"],
        )
        self._request_duration = histogram(
            "bestofk_request_duration_seconds",
            "Wall time from request arrival to response, by endpoint.",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
        )
        self._stage_duration = histogram(
            "bestofk_stage_duration_seconds",
            "Wall time of each pipeline stage (queue, generate, verify, total).",
            ["stage"],
            buckets=LATENCY_BUCKETS,
        )
        self._generation_duration = histogram(
            "bestofk_generation_duration_seconds",
            "Engine time to produce all K candidates of a request.",
            buckets=LATENCY_BUCKETS,
        )
        self._verification_duration = histogram(
            "bestofk_verification_duration_seconds",
            "Time one verifier took on one candidate.",
            ["verifier"],
            buckets=VERIFIER_BUCKETS,
        )
        self._candidates = counter(
            "bestofk_candidates_total", "Candidates generated or given for verification."
        )
        self._reasoning_truncated = counter(
            "bestofk_reasoning_truncated_total",
            "Candidates whose thinking max_tokens cut before it ended: no answer, every answer "
            "verifier fails them.",
        )
        self._reasoning_tokens = counter(
            "bestofk_reasoning_tokens_total",
            "Generated tokens spent thinking (before the answer), over every candidate.",
        )
        self._verdicts = counter(
            "bestofk_verdicts_total",
            "Verdicts by verifier and outcome (pass/fail/error).",
            ["verifier", "outcome"],
        )
        self._selected_score = histogram(
            "bestofk_selected_score",
            "Combined score of the chosen candidate.",
            buckets=SCORE_BUCKETS,
        )
        self._k = histogram("bestofk_k", "Candidates requested per request (K).", buckets=K_BUCKETS)
        self._with_passing = counter(
            "bestofk_requests_with_passing_candidate_total",
            "Requests where at least one candidate passed every verifier (pass@K).",
        )
        self._first_passed = counter(
            "bestofk_first_candidate_passed_total",
            "Requests whose first sample (index 0) passed every verifier (pass@1).",
        )
        self._reranked = counter(
            "bestofk_reranked_requests_total",
            "Requests that ran the rerank pipeline with verifiers.",
        )
        self._early_exits = counter(
            "bestofk_early_exits_total",
            "Requests whose generation was cut short by early exit.",
        )
        self._load_reduced = counter(
            "bestofk_load_reduced_requests_total",
            "Requests given a smaller K than they asked because the engine was saturated "
            "(load-aware K; stats.k < stats.k_requested).",
        )
        self._confidence_cut = counter(
            "bestofk_confidence_cut_candidates_total",
            "Candidates confidence-aware stopping cut short (their window confidence fell "
            "below the warm-up wave's threshold).",
        )
        self._inflight = gauge(
            "bestofk_inflight_requests",
            "Requests being processed now.",
            multiprocess_mode="livesum",
        )
        self._sandbox_runs = counter(
            "bestofk_sandbox_runs_total",
            "Sandboxed code runs by outcome (ok/fail/timeout/memory/killed/error).",
            ["outcome"],
        )
        self._prompt_tokens = counter(
            "bestofk_prompt_tokens_total", "Prompt tokens sent to the engine."
        )
        self._generated_tokens = counter(
            "bestofk_generated_tokens_total",
            "Tokens generated over all candidates, aborted ones too.",
        )
        # Request records (``--record-dir``, service/records/recorder.py).
        self._records_written = counter(
            "bestofk_records_written_total",
            "Request records appended to a record file that still had its name.",
        )
        self._records_dropped = counter(
            "bestofk_records_dropped_total",
            "Request records not written, by reason (queue_full: the writer fell behind; "
            "closed: the recorder had stopped; no_space, read_only, permission: the write "
            "failed so; deleted: the record files were deleted as fast as they were made; "
            "too_large: a record over the readers' line cap; error: any other failure).",
            ["reason"],
        )
        self._records_healthy = gauge(
            "bestofk_records_healthy",
            "1 while the last record write succeeded, 0 from a failed write (no space, "
            "read-only, permission...) until a write succeeds again; only with --record-dir. "
            "With several workers, the least of theirs: 0 as soon as one cannot record.",
            ["directory"],
            multiprocess_mode="livemin",
        )
        # The engines (service/engines/): the app hands them this object when it builds them.
        self._engine_restarts = counter(
            "bestofk_engine_restarts_total",
            "Times the in-process vLLM engine died and was restarted.",
        )
        self._backend_up = gauge(
            "bestofk_backend_up",
            "1 while a backend takes requests (healthy and not ejected), else 0; "
            'backend="in-process" is the in-process engine. With several workers, the least '
            "of their views: 0 as soon as one worker cannot use it.",
            ["backend"],
            multiprocess_mode="livemin",
        )
        # Series with a known, closed label set exist from start-up at zero, so a rate() or an
        # alert on them has data (and a sandbox-timeout alert can fire on its first timeout,
        # not its second).
        # Kept: a request observes every stage, and labels() takes a lock and a lookup.
        self._stages = {stage: self._stage_duration.labels(stage) for stage in STAGES}
        for outcome in SANDBOX_OUTCOMES:
            self._sandbox_runs.labels(outcome)
        for reason in RECORD_DROP_REASONS:
            self._records_dropped.labels(reason)

    # --- the HTTP edge and the runtime -------------------------------------------------------

    def request(self, endpoint: str, status: int, seconds: float) -> None:
        """Count one answered request by its route and status, and its wall time."""
        self._requests.labels(endpoint, str(status)).inc()
        self._request_duration.labels(endpoint).observe(seconds)

    def admitted(self) -> None:
        """A request took an in-flight slot."""
        self._inflight.inc()

    def released(self) -> None:
        """A request gave its in-flight slot back."""
        self._inflight.dec()

    def load_reduced(self) -> None:
        """Load-aware K gave a request fewer candidates than it asked for."""
        self._load_reduced.inc()

    def observe(self, result: RerankResult) -> None:
        """Record everything one finished request says about candidates, verifiers, tokens."""
        timing = result.timing
        stages = self._stages
        stages["queue"].observe(timing.queue_ms / 1000)
        stages["generate"].observe(timing.generate_ms / 1000)
        stages["verify"].observe(timing.verify_ms / 1000)
        stages["total"].observe(timing.total_ms / 1000)
        if timing.generate_ms:
            self._generation_duration.observe(timing.generate_ms / 1000)
        self._k.observe(result.k)
        self._candidates.inc(len(result.candidates))
        if result.reasoning_parser is not None:
            self._reasoning_truncated.inc(sum(s.candidate.truncated for s in result.candidates))
            self._reasoning_tokens.inc(result.reasoning_tokens)
        # One label lookup per verifier, not per verdict: K x verifiers lookups add up.
        outcomes: collections.Counter[tuple[str, str]] = collections.Counter()
        latencies: dict[str, list[float]] = {}
        for scored in result.candidates:
            for verdict in scored.verdicts:
                outcome = "error" if verdict.error else ("pass" if verdict.passed else "fail")
                outcomes[verdict.verifier, outcome] += 1
                latencies.setdefault(verdict.verifier, []).append(verdict.latency_ms / 1000)
        for (verifier, outcome), count in outcomes.items():
            self._verdicts.labels(verifier, outcome).inc(count)
        for verifier, seconds in latencies.items():
            histogram = self._verification_duration.labels(verifier)
            for value in seconds:
                histogram.observe(value)
        if any(s.verdicts for s in result.candidates):
            self._reranked.inc()
            if result.passing:
                self._with_passing.inc()
            if result.first_sample_passed:
                self._first_passed.inc()
        self._selected_score.observe(result.chosen.score)
        if result.early_exit:
            self._early_exits.inc()
        if cut := result.cut:
            self._confidence_cut.inc(cut)
        self._prompt_tokens.inc(result.prompt_tokens)
        self._generated_tokens.inc(result.completion_tokens)

    # --- the sandbox and the request records -------------------------------------------------

    def sandbox_run(self, outcome: str) -> None:
        """Count one sandboxed code run by its outcome (one of :data:`SANDBOX_OUTCOMES`)."""
        self._sandbox_runs.labels(outcome if outcome in SANDBOX_OUTCOMES else "error").inc()

    def record_written(self) -> None:
        """One request record reached its file."""
        self._records_written.inc()

    def record_dropped(self, reason: str) -> None:
        """One request record was lost, for ``reason`` (one of :data:`RECORD_DROP_REASONS`)."""
        self._records_dropped.labels(reason).inc()

    def records_healthy(self, directory: Path, healthy: bool) -> None:
        """Whether the last write to ``directory`` succeeded."""
        self._records_healthy.labels(str(directory)).set(1 if healthy else 0)

    # --- the engines -------------------------------------------------------------------------

    def backend_up(self, backend: str, up: bool) -> None:
        """Whether ``backend`` (a remote backend's label, or ``"in-process"``) takes requests."""
        self._backend_up.labels(backend).set(1 if up else 0)

    def engine_restarted(self) -> None:
        """The in-process engine died and is being restarted."""
        self._engine_restarts.inc()

    # --- /metrics ----------------------------------------------------------------------------

    def render(self) -> tuple[bytes, str]:
        """The exposition text for /metrics: this app's metrics and the process-wide ones
        (``vllm:*``, ``process_*``), or every worker's summed in multiprocess mode."""
        path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if path:
            forget_dead_workers(Path(path))
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry) + generate_latest(REGISTRY), CONTENT_TYPE_LATEST

    def value(self, name: str, **labels: str) -> float:
        """One sample's value in this process (0 if it has none yet): for tests and probes."""
        found = self.registry.get_sample_value(name, labels or None)
        if found is None:
            found = REGISTRY.get_sample_value(name, labels or None)
        return found or 0.0


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
