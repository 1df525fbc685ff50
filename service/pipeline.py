"""The rerank pipeline: sample K → verify each as it finishes → set-level verifiers → select.

Both APIs (native and OpenAI) build a :class:`RerankJob` and call :meth:`Pipeline.run`; they
differ only in how they parse and render. Everything here is plain dataclasses.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import cast

from bestofk.service.adaptive import AdaptiveConfig, Budget, StopReason, clear_majority
from bestofk.service.confidence import ConfidenceConfig, ConfidenceWatch, lowest_group_confidence
from bestofk.service.engines.base import (
    CandidateWatch,
    Engine,
    Prompt,
    SampleStream,
    SamplingConfig,
)
from bestofk.service.errors import DeadlineExceededError, InvalidRequestError, OverloadedError
from bestofk.service.reasoning import ReasoningParsers, Split
from bestofk.service.selection import Scored, SelectionConfig, combine, ranked, select
from bestofk.verifiers import registry
from bestofk.verifiers.answers import EXTRACT_TIMED_OUT, answer_keys
from bestofk.verifiers.base import (
    Candidate,
    ParsedCalls,
    RequestContext,
    SetVerifier,
    TargetNotAllowedError,
    Verdict,
    Verifier,
    VerifierCapacityError,
    VerifierResources,
    VerifierSpec,
    run_bounded,
)
from bestofk.verifiers.tool_calls import call_key

log = logging.getLogger(__name__)

BUDGET_POLL_S = 0.01
"""How often a wave under a budget looks at its tokens and the clock (the engine streams a
candidate's tokens every ``STREAM_INTERVAL`` steps, so finer would see nothing new)."""
ADAPTIVE_MIN_SCORE = 1.0
"""The pass rule's score when the request sets no ``early_exit`` (its default)."""


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


@dataclass(frozen=True, slots=True)
class RerankJob:
    """One request, validated and resolved (profile applied, limits checked)."""

    request_id: str
    prompt: Prompt
    k: int
    """Candidates to sample (for ``/verify``: the number given)."""
    sampling: SamplingConfig
    specs: Sequence[VerifierSpec]
    k_requested: int | None = None
    """The K asked for (or defaulted) when it differs from ``k``: greedy sampling has one."""
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    early_exit_min_score: float | None = None
    given: Sequence[str] | None = None
    """Candidates to rank instead of generating (``/verify``)."""
    parse_calls: Callable[[str], ParsedCalls] | None = None
    """Reads a candidate's tool calls from its text, when the request offered tools."""
    timeout_s: float = 300.0
    profile: str | None = None
    """The server-side profile the request named, if any (recorded with the verdicts)."""
    reasoning_parser: str | None = None
    """vLLM's reasoning parser that splits each candidate into reasoning and answer."""
    adaptive: AdaptiveConfig | None = None
    """Sample in waves up to ``k`` (:mod:`bestofk.service.adaptive`); None: all K at once."""
    budget: Budget | None = None
    """Caps on the search's tokens and time."""
    watch: CandidateWatch | None = None
    """Watches every candidate's tokens as they come and may cut one short (the engine's
    hook, passed on as it is)."""
    confidence: ConfidenceConfig | None = None
    """Confidence-aware stopping: a warm-up wave, then waves watched by a
    :class:`~bestofk.service.confidence.ConfidenceWatch` calibrated on it."""
    arrived: float = field(default_factory=time.perf_counter)


@dataclass(slots=True)
class Timing:
    """Milliseconds from arrival: queue wait, first candidate, generation, verification."""

    queue_ms: float = 0.0
    first_candidate_ms: float | None = None
    generate_ms: float = 0.0
    verify_ms: float = 0.0
    total_ms: float = 0.0


@dataclass(slots=True)
class RerankResult:
    """Everything behind the choice."""

    request_id: str
    model: str
    chosen: Scored
    candidates: list[Scored]
    """In index order."""
    k: int
    early_exit: bool
    partial: bool
    """The deadline passed: the choice is the best of what was verified in time."""
    prompt_tokens: int
    completion_tokens: int
    verifier_tokens: int
    timing: Timing
    by_logprob: bool = True
    """Ties between equal scores go to the higher mean logprob (else the lower index)."""
    sampled: bool = True
    """The candidates came from the engine (False for ``/verify``)."""
    k_requested: int | None = None
    """The K asked for or defaulted, when greedy sampling collapsed ``k`` to 1."""
    answers: Mapping[int, str] = field(default_factory=dict)
    """For the ``vote`` policy: each candidate's answer key by index (its cluster)."""
    reasoning_parser: str | None = None
    """The reasoning parser that split the candidates, if any."""
    waves: int = 0
    """Engine streams started: 1 without adaptive K, 0 for ``/verify``."""
    started: int = 0
    """Candidates started in the engine (finished, aborted or cut): ``stats.sampled``."""
    stopped_by: StopReason | None = None
    """Why sampling ended (None for ``/verify``, or when the deadline ended it)."""
    threshold: float | None = None
    """Confidence-aware stopping's threshold, as the warm-up wave set it."""

    @property
    def cut(self) -> int:
        """Candidates a watch cut short (``Scored.cut``)."""
        return sum(s.cut for s in self.candidates)

    @property
    def reasoning_tokens(self) -> int:
        """Tokens all candidates spent before their answers (vLLM's ``reasoning_tokens``)."""
        return sum(s.candidate.reasoning_tokens for s in self.candidates)

    @property
    def generated(self) -> int:
        """Candidates the engine finished (none for ``/verify``, which ranks given ones)."""
        return len(self.candidates) if self.sampled else 0

    @property
    def passing(self) -> int:
        """Candidates that passed every verifier."""
        return sum(s.passed for s in self.candidates)

    @property
    def first_sample_passed(self) -> bool:
        """Whether sample 0, an unbiased single draw, passed: pass@1's numerator."""
        return any(s.passed for s in self.candidates if s.candidate.index == 0)

    def top(self, n: int) -> list[Scored]:
        """The best ``n`` candidates with distinct texts, the chosen one first."""
        seen = {self.chosen.candidate.text}
        out = [self.chosen]
        for s in ranked(self.candidates, self.by_logprob):
            if len(out) >= n:
                break
            if s.candidate.text not in seen and not s.cut:
                seen.add(s.candidate.text)
                out.append(s)
        return out


def _candidate(
    candidate: Candidate, job: RerankJob, reasoning: ReasoningParsers | None
) -> Candidate:
    """The candidate to verify, from the engine's: with a reasoning parser, split into
    reasoning and answer; with tools, the answer's tool calls read by the tool parser."""
    if job.reasoning_parser is not None and reasoning is not None:
        candidate = _split(candidate, job, job.reasoning_parser, reasoning)
    elif candidate.reasoning is not None:
        # A backend's parser sent thinking apart, but this job reads none: the text is the
        # candidate, as without a parser anywhere.
        candidate = replace(candidate, reasoning=None)
    if job.parse_calls is not None and candidate.answered:
        candidate = replace(candidate, calls=job.parse_calls(candidate.text))
    return candidate


def _split(
    candidate: Candidate, job: RerankJob, name: str, reasoning: ReasoningParsers
) -> Candidate:
    """``candidate`` (as the engine finished it) split into reasoning and answer: by the
    remote backend when it sent them apart (its ``reasoning``), else here with the same
    parser."""
    start, end = reasoning.markers(name)
    if candidate.reasoning or (
        # A backend that splits sent this one with nothing thought: unless its markers are in
        # the text, for then the backend did not split it (another server behind the URL).
        candidate.reasoning is not None and not any(m and m in candidate.text for m in (start, end))
    ):
        # The backend's own parser split it; its end marker is gone, so the whole output is
        # told back as vLLM's parsers read it: reasoning, the marker, the answer.
        split = Split(
            candidate.reasoning,
            candidate.text or None,
            reasoning.reasoning_tokens(candidate.tokens, candidate.text),
        )
        output = (candidate.reasoning or "") + end + candidate.text
    else:
        split = reasoning.split(
            name, candidate.text, candidate.tokens, job.prompt.chat_template_kwargs
        )
        output = candidate.text
    return replace(
        candidate,
        text=split.answer or "",
        reasoning=split.reasoning,
        output=output,
        answered=split.answer is not None,
        reasoning_tokens=split.reasoning_tokens,
    )


class JobRun:
    """The state of one job while it runs, from its verifiers built (:meth:`Pipeline.prepare`)."""

    def __init__(self, pipeline: Pipeline, job: RerankJob) -> None:
        self.job = job
        self.start = time.perf_counter()
        built = registry.build(job.specs, pipeline.resources)
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
        self.answers: dict[int, str] = {}
        """For ``vote``: each candidate's answer key (none when the deadline came first)."""

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
            return JobRun(self, job)
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
                        *(run.verify(_candidate(g, job, self.reasoning)) for g in given)
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
                run.watch = _calibrated_watch(run, job.confidence)
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
                        tasks.create_task(check(_candidate(sample, run.job, self.reasoning)))
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
            Scored(_candidate(sample, job, self.reasoning), [], required_ok=False)
            for sample in run.cut.values()
        ]
        candidates = sorted(verified + cut, key=lambda s: s.candidate.index)
        if job.confidence is not None:
            for s in candidates:
                if s.candidate.logprobs:
                    s.confidence = lowest_group_confidence(
                        s.candidate.logprobs, job.confidence.window, job.confidence.top_logprobs
                    )
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


def _calibrated_watch(run: JobRun, confidence: ConfidenceConfig) -> ConfidenceWatch:
    """The watch for the waves after the warm-up, its threshold from every warm-up candidate
    (all of that wave, run to its end: never the first to finish alone)."""
    threshold = confidence.threshold([s.logprobs for s in run.samples.values()])
    log.debug("request %s: confidence threshold %s", run.job.request_id, threshold)
    return ConfidenceWatch(threshold, confidence.window, confidence.top_logprobs)
