"""A rerank job and its result: what both APIs hand :meth:`Pipeline.run
<bestofk.service.pipeline.Pipeline.run>`, and what it hands back (plain dataclasses).

Both APIs (native and OpenAI) build a :class:`RerankJob`; they differ only in how they parse
and render. :mod:`bestofk.service.results` turns a :class:`RerankResult` into plain data.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from bestofk.service.adaptive import AdaptiveConfig, Budget, StopReason
from bestofk.service.confidence import ConfidenceConfig
from bestofk.service.engines.base import CandidateWatch, Prompt, SamplingConfig
from bestofk.service.selection import Scored, SelectionConfig, ranked
from bestofk.verifiers.base import ParsedCalls, VerifierSpec


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
