"""The rerank pipeline: sample K → verify each as it finishes → set-level verifiers → select.

:meth:`Pipeline.run` takes a :class:`~bestofk.service.rerank.RerankJob` and returns a
:class:`~bestofk.service.rerank.RerankResult`; it generates in waves (adaptive K, confidence
warm-up) and chooses, while a :class:`~bestofk.service.job_run.JobRun` holds the job's state
and verifies each candidate. Of the engines it imports only their protocol.
"""

from __future__ import annotations

import asyncio
import logging
import time

from bestofk.service.adaptive import StopReason, clear_majority
from bestofk.service.candidates import to_verify
from bestofk.service.engines.base import Engine, SampleStream
from bestofk.service.errors import DeadlineExceededError, InvalidRequestError, OverloadedError
from bestofk.service.job_run import JobRun
from bestofk.service.reasoning import ReasoningParsers
from bestofk.service.rerank import RerankJob, RerankResult, Timing
from bestofk.service.selection import Scored, combine, select
from bestofk.verifiers.answers import EXTRACT_TIMED_OUT, answer_keys
from bestofk.verifiers.base import (
    Candidate,
    TargetNotAllowedError,
    VerifierCapacityError,
    VerifierResources,
    run_bounded,
)
from bestofk.verifiers.tool_calls import call_key

log = logging.getLogger(__name__)

BUDGET_POLL_S = 0.01
"""How often a wave under a budget looks at its tokens and the clock (the engine streams a
candidate's tokens every ``STREAM_INTERVAL`` steps, so finer would see nothing new)."""
ADAPTIVE_MIN_SCORE = 1.0
"""The pass rule's score when the request sets no ``early_exit`` (its default)."""


class Pipeline:
    """Runs jobs against one engine with one set of verifier resources."""

    def __init__(
        self,
        engine: Engine,
        resources: VerifierResources,
        reasoning: ReasoningParsers | None = None,
    ) -> None:
        self.engine = engine
        self.resources = resources
        self.reasoning = reasoning
        """vLLM's reasoning parsers over the model's tokenizer, for jobs that name one."""

    def prepare(self, job: RerankJob) -> JobRun:
        """Build ``job``'s verifiers: what a spec refuses (a judge endpoint or reward model the
        server does not allow) is an InvalidRequestError before anything is generated."""
        try:
            return JobRun(job, self.resources)
        except TargetNotAllowedError as exc:
            raise InvalidRequestError(
                f"{exc}: the operator lists the judge endpoints and reward models requests may "
                "name in BESTOFK_VERIFIER_TARGETS (the verifier_targets setting), or sets "
                "BESTOFK_ALLOW_ANY_VERIFIER_TARGET=1 for trusted clients; a judge without an "
                "endpoint uses the serving model and needs no entry",
                param="verifiers",
                code="verifier_target_not_allowed",
            ) from None

    async def run(self, job: RerankJob, prepared: JobRun | None = None) -> RerankResult:
        """Generate (or take) the candidates, verify them, and choose one."""
        run = prepared or self.prepare(job)
        timed_out = False
        try:
            async with asyncio.timeout(job.timeout_s - (run.start - job.arrived)):
                if job.given is not None:
                    given = [Candidate(i, t) for i, t in enumerate(job.given)]
                    await asyncio.gather(
                        *(run.verify(to_verify(g, job, self.reasoning)) for g in given)
                    )
                else:
                    await self._generate_and_verify(run)
                await run.set_verify()
                if job.selection.policy == "vote":
                    run.answers = await self._answers(run)
        except VerifierCapacityError as exc:
            raise OverloadedError(str(exc), retry_after_s=exc.retry_after_s) from None
        except TimeoutError:
            timed_out = True
            if not run.scored:
                raise DeadlineExceededError(
                    f"no candidate was verified within the {job.timeout_s:g}s deadline"
                ) from None
            for s in run.scored.values():
                combine(s, run.specs[: len(s.verdicts)])
        return self._result(run, timed_out)

    async def _answers(self, run: JobRun) -> dict[int, str]:
        """The ``vote`` policy's answer clusters, found off the loop. A runaway extract pattern
        is the client's to fix: 400; without one, answers math-verify could not group in time
        are each their own cluster."""
        candidates = [run.scored[i].candidate for i in sorted(run.scored)]
        # A call's answer is the call: its name and canonical arguments.
        calls = {c.index: call_key(c.calls.calls) for c in candidates if c.calls and c.calls.calls}
        indices = [c.index for c in candidates if c.answered and c.index not in calls]
        if not indices:
            return calls
        texts = [run.scored[i].candidate.text for i in indices]
        extract = run.job.selection.extract
        try:
            keys = await run_bounded(self.resources.workers, answer_keys, texts, extract)
        except (TimeoutError, MemoryError) as exc:
            if extract is None:
                log.warning("request %s: no vote clusters: %s", run.job.request_id, exc)
                return calls
            why = EXTRACT_TIMED_OUT if isinstance(exc, TimeoutError) else str(exc)
            raise InvalidRequestError(
                f"selection.extract: {why}; simplify the pattern", param="selection.extract"
            ) from None
        return {**dict(zip(indices, keys, strict=True)), **calls}

    async def _generate_and_verify(self, run: JobRun) -> None:
        """Sample the candidates, in waves with adaptive K, verifying each as it finishes."""
        job = run.job
        adaptive = job.adaptive
        by_majority = adaptive is not None and (job.selection.policy == "vote" or not run.specs)
        min_score = job.early_exit_min_score
        if adaptive is not None and not by_majority and min_score is None:
            min_score = ADAPTIVE_MIN_SCORE
        for size in _wave_sizes(job):
            if run.streams and (reason := await self._settled(run, by_majority)) is not None:
                run.stopped_by = reason
                return
            if run.streams and job.confidence is not None and run.watch is None:
                run.calibrate(job.confidence)
            stream = self.engine.sample(
                job.prompt,
                size,
                job.sampling,
                job.request_id,
                first_index=run.sampled,
                watch=run.watch or job.watch,
            )
            run.streams.append(stream)
            run.sampled += size
            try:
                await self._wave(run, stream, min_score)
            except BaseExceptionGroup as group:
                # One failure cancels the rest; surface it as itself, not wrapped in a group.
                raise group.exceptions[0] from None
            if run.stopped_by is not None:
                return
        run.stopped_by = "k"

    async def _settled(self, run: JobRun, by_majority: bool) -> StopReason | None:
        """Between waves: whether the candidates so far settle the request (a pass ends the
        wave itself, as early exit)."""
        if (reason := run.over_budget()) is not None:
            return reason
        if by_majority:
            assert run.job.adaptive is not None
            answers = await self._answers(run)
            keys = [answers.get(i) for i in sorted(run.scored)]
            if clear_majority(keys, run.job.adaptive):
                return "majority"
        return None

    async def _wave(self, run: JobRun, stream: SampleStream, min_score: float | None) -> None:
        async with asyncio.TaskGroup() as tasks:

            async def check(candidate: Candidate) -> None:
                scored = await run.verify(candidate)
                if (
                    min_score is not None
                    and not run.early_exit
                    and scored.required_ok
                    and scored.score >= min_score
                    and len(run.samples) < run.job.k
                ):
                    run.early_exit = True
                    run.stopped_by = run.stopped_by or "early_exit"
                    producer.cancel()

            async def produce() -> None:
                try:
                    async for sample in stream:
                        run.first_candidate = run.first_candidate or time.perf_counter()
                        run.samples[sample.index] = sample
                        if sample.cut:  # partial text: nothing to verify
                            run.cut[sample.index] = sample
                            continue
                        tasks.create_task(check(to_verify(sample, run.job, self.reasoning)))
                        # Let the check start now, even while the stream has more buffered.
                        await asyncio.sleep(0)
                finally:
                    # Aborts the unfinished candidates in the engine (early exit, budget,
                    # deadline, client gone); a no-op once all are in.
                    await stream.aclose()
                    run.generated_at = time.perf_counter()

            async def guard() -> None:
                # The budget ends the wave mid-way, once there is a candidate to answer with.
                while not producer.done():
                    await asyncio.sleep(BUDGET_POLL_S)
                    if run.samples and (reason := run.over_budget()) is not None:
                        run.stopped_by = run.stopped_by or reason
                        producer.cancel()
                        return

            producer = tasks.create_task(produce())
            if run.job.budget is not None:
                tasks.create_task(guard())

    def _result(self, run: JobRun, timed_out: bool) -> RerankResult:
        end = time.perf_counter()
        job = run.job
        verified = [run.scored[i] for i in sorted(run.scored)]
        cut = [
            Scored(to_verify(sample, job, self.reasoning), [], required_ok=False)
            for sample in run.cut.values()
        ]
        candidates = sorted(verified + cut, key=lambda s: s.candidate.index)
        if job.confidence is not None:
            for s in candidates:
                s.confidence = run.lowest_confidence(s.candidate, job.confidence)
        timing = Timing(
            queue_ms=(run.start - job.arrived) * 1000,
            first_candidate_ms=run.ms(run.first_candidate) if run.first_candidate else None,
            generate_ms=((run.generated_at or end) - run.start) * 1000 if run.streams else 0.0,
            verify_ms=((run.verify_end or end) - (run.verify_start or end)) * 1000,
            total_ms=(end - job.arrived) * 1000,
        )
        return RerankResult(
            request_id=job.request_id,
            model=self.engine.model_name,
            # Cut candidates are out of the choice (and of a vote) unless nothing else is in.
            chosen=select(verified or cut, job.selection, run.answers),
            candidates=candidates,
            k=job.k,
            early_exit=run.early_exit,
            partial=timed_out,
            prompt_tokens=max((s.prompt_tokens for s in run.streams), default=0),
            completion_tokens=run.completion_tokens,
            verifier_tokens=sum(v.tokens for s in candidates for v in s.verdicts),
            timing=timing,
            by_logprob=job.selection.by_logprob,
            sampled=job.given is None,
            k_requested=job.k_requested,
            answers=run.answers,
            reasoning_parser=job.reasoning_parser if self.reasoning is not None else None,
            waves=len(run.streams),
            started=run.sampled,
            stopped_by=None if timed_out else run.stopped_by,
            threshold=run.watch.threshold if run.watch is not None else None,
        )


def _wave_sizes(job: RerankJob) -> list[int]:
    """The waves' sizes: adaptive K's, else all K at once; with confidence-aware stopping the
    first is the warm-up, and the rest (adaptive K's waves over what is left, else one) are
    watched."""
    adaptive, confidence = job.adaptive, job.confidence
    if confidence is None:
        return adaptive.waves(job.k) if adaptive is not None else [job.k]
    warmup = confidence.warmup_size(job.k, adaptive.first_wave if adaptive else None)
    rest = job.k - warmup
    if not rest:
        return [warmup]
    return [warmup, *(adaptive.waves(rest) if adaptive is not None else [rest])]
