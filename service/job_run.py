"""One job while it runs (:class:`JobRun`): its verifiers, each candidate verified as it
finishes, the set-level verifiers once all are in, and what the pipeline reads back to choose.

:func:`timed` is the one place a verdict is timed: verifiers only check.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import cast

from bestofk.service.adaptive import StopReason
from bestofk.service.confidence import ConfidenceConfig, ConfidenceWatch
from bestofk.service.engines.base import SampleStream
from bestofk.service.rerank import RerankJob
from bestofk.service.selection import Scored, combine
from bestofk.verifiers import registry
from bestofk.verifiers.base import (
    Candidate,
    RequestContext,
    SetVerifier,
    Verdict,
    Verifier,
    VerifierCapacityError,
    VerifierResources,
)

log = logging.getLogger(__name__)


async def timed(name: str, check: Callable[[], Awaitable[Verdict]]) -> Verdict:
    """Run a check, stamp its latency, and turn any exception into an error verdict.

    The one place a verdict is timed: verifiers only check."""
    start = time.perf_counter()
    try:
        verdict = await check()
    except VerifierCapacityError:
        raise
    except Exception as exc:  # a verifier bug must never fail the request
        return Verdict.failure(
            name, f"{type(exc).__name__}: {exc}", (time.perf_counter() - start) * 1000
        )
    verdict.latency_ms = (time.perf_counter() - start) * 1000
    return verdict


class JobRun:
    """The state of one job while it runs, from its verifiers built
    (:meth:`~bestofk.service.pipeline.Pipeline.prepare`)."""

    def __init__(self, job: RerankJob, resources: VerifierResources) -> None:
        self.job = job
        self.start = time.perf_counter()
        built = registry.build(job.specs, resources)
        self.pointwise: list[Verifier] = []
        self.set_level: list[SetVerifier] = []
        for verifier in built:
            if registry.scores_one(verifier):
                self.pointwise.append(verifier)
            else:
                self.set_level.append(cast(SetVerifier, verifier))
        # Verdicts are stored in this order, so specs line up with them for combining.
        self.specs = [v.spec for v in self.pointwise] + [v.spec for v in self.set_level]
        self.ctx = RequestContext(
            prompt=job.prompt.as_text, messages=job.prompt.messages, request_id=job.request_id
        )
        self.scored: dict[int, Scored] = {}
        self.samples: dict[int, Candidate] = {}
        """Every finished candidate by index, as the engine handed it on."""
        self.first_candidate: float | None = None
        self.generated_at: float | None = None
        self.verify_start: float | None = None
        self.verify_end: float | None = None
        self.early_exit = False
        self.streams: list[SampleStream] = []
        """One per wave, in order."""
        self.sampled = 0
        self.stopped_by: StopReason | None = None
        self.cut: dict[int, Candidate] = {}
        """Candidates a watch cut short: never verified, never in a ``vote``."""
        self.watch: ConfidenceWatch | None = None
        """Confidence-aware stopping's watch, once the warm-up wave has calibrated it."""
        self.confidence: dict[int, float | None] = {}
        """The warm-up candidates' lowest group confidences, as the calibration computed them."""
        self.answers: dict[int, str] = {}
        """For ``vote``: each candidate's answer key (none when the deadline came first)."""

    def calibrate(self, confidence: ConfidenceConfig) -> None:
        """Set :attr:`watch` for the waves after the warm-up, its threshold from every warm-up
        candidate (all of that wave, run to its end: never the first to finish alone)."""
        for index, sample in self.samples.items():
            self.confidence[index] = confidence.lowest(sample.logprobs)
        threshold = confidence.threshold(self.confidence.values())
        log.debug("request %s: confidence threshold %s", self.job.request_id, threshold)
        self.watch = ConfidenceWatch(threshold, confidence.window, confidence.top_logprobs)

    def lowest_confidence(self, candidate: Candidate, confidence: ConfidenceConfig) -> float | None:
        """``candidate``'s lowest group confidence (None without logprobs), computed once: the
        calibration's for a warm-up candidate, the watch's (given the tokens of the delta that
        finished it, which a watch is not offered) for a watched one, else from its logprobs."""
        if not candidate.logprobs:
            return None
        if candidate.index in self.confidence:
            return self.confidence[candidate.index]
        if self.watch is not None:
            return self.watch.finish(candidate.index, candidate.logprobs)
        return confidence.lowest(candidate.logprobs)

    def ms(self, at: float | None) -> float:
        return 0.0 if at is None else (at - self.job.arrived) * 1000

    @property
    def completion_tokens(self) -> int:
        """Tokens generated over every wave so far, aborted work included."""
        return sum(s.completion_tokens for s in self.streams)

    def over_budget(self) -> StopReason | None:
        """Which cap of the budget the search has reached, if any."""
        budget = self.job.budget
        if budget is None:
            return None
        if budget.max_tokens is not None and self.completion_tokens >= budget.max_tokens:
            return "budget_tokens"
        if budget.deadline_s is not None and time.perf_counter() - self.start >= budget.deadline_s:
            return "budget_deadline"
        return None

    async def verify(self, candidate: Candidate) -> Scored:
        now = time.perf_counter()
        self.verify_start = min(self.verify_start or now, now)
        if len(self.pointwise) == 1:  # the common case: no task to gather a single check
            verdicts = [await self._check(self.pointwise[0], candidate)]
        else:
            verdicts = await asyncio.gather(*(self._check(v, candidate) for v in self.pointwise))
        self.verify_end = time.perf_counter()
        scored = Scored(
            candidate, list(verdicts), ready_ms=self.ms(now), verified_ms=self.ms(self.verify_end)
        )
        combine(scored, self.specs[: len(self.pointwise)])
        self.scored[candidate.index] = scored
        return scored

    async def _check(self, verifier: Verifier, candidate: Candidate) -> Verdict:
        part = verifier.spec.input
        if part == "answer" and not candidate.answered:
            return Verdict(verifier.spec.type, 0.0, False, candidate.no_answer)
        seen = candidate.view(part)
        return await timed(verifier.spec.type, lambda: verifier.verify(self.ctx, seen))

    async def set_verify(self) -> None:
        if not self.set_level or not self.scored:
            return
        ordered = [self.scored[i] for i in sorted(self.scored)]
        for verifier in self.set_level:
            part = verifier.spec.input
            # Candidates without an answer fail an answer verifier unseen; the rest are judged
            # together (a vote among the answers there are).
            judged = [s for s in ordered if part != "answer" or s.candidate.answered]
            verdicts = (
                await _verify_set(verifier, self.ctx, [s.candidate.view(part) for s in judged])
                if judged
                else []
            )
            by_index = {s.candidate.index: v for s, v in zip(judged, verdicts, strict=True)}
            for s in ordered:
                missing = Verdict(verifier.spec.type, 0.0, False, s.candidate.no_answer)
                s.verdicts.append(by_index.get(s.candidate.index, missing))
        for s in ordered:
            combine(s, self.specs)
        self.verify_end = time.perf_counter()


async def _verify_set(
    verifier: SetVerifier, ctx: RequestContext, candidates: list[Candidate]
) -> list[Verdict]:
    """:func:`timed` for a set-level verifier: every verdict carries the time of the whole set."""
    start = time.perf_counter()
    try:
        verdicts = await verifier.verify_all(ctx, candidates)
        if len(verdicts) != len(candidates):
            raise ValueError(f"returned {len(verdicts)} verdicts for {len(candidates)} candidates")
    except VerifierCapacityError:
        raise
    except Exception as exc:  # a verifier bug must never fail the request
        elapsed = (time.perf_counter() - start) * 1000
        error = f"{type(exc).__name__}: {exc}"
        return [Verdict.failure(verifier.spec.type, error, elapsed) for _ in candidates]
    elapsed = (time.perf_counter() - start) * 1000
    for verdict in verdicts:
        verdict.latency_ms = elapsed
    return verdicts
