"""Request and response bodies of the native API (``/generate``, ``/verify``)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from bestofk.service.schemas.adaptive import Adaptive, AdaptiveField, Budget
from bestofk.service.schemas.confidence import Confidence, ConfidenceField
from bestofk.service.schemas.sampling import SamplingFields
from bestofk.verifiers.base import VerifierSpec
from bestofk.verifiers.registry import parse_spec

Role = Literal["system", "developer", "user", "assistant", "tool"]


def _parse_specs(value: Any) -> Any:
    if not isinstance(value, list):
        return value  # pydantic reports the type error with the field name
    return [
        parse_spec(raw, ("verifiers", i)) if isinstance(raw, dict) else raw
        for i, raw in enumerate(value)
    ]


VerifierSpecs = Annotated[list[VerifierSpec], BeforeValidator(_parse_specs)]
"""Each spec validated against its own type's fields; errors name the field."""


class Strict(BaseModel):
    """Unknown fields are errors: a typo must not silently become a default."""

    model_config = ConfigDict(extra="forbid")


class Message(BaseModel):
    """A chat message; extra OpenAI fields (``name``, ``tool_calls``…) pass through."""

    model_config = ConfigDict(extra="allow")

    role: Role
    content: str | list[dict[str, Any]] | None = None


class Sampling(Strict, SamplingFields):
    """The ``sampling`` object: the shared sampling fields, unknown ones refused."""


class Selection(Strict):
    """How to choose among the scored candidates; a field left out (or null) is the profile's,
    else the server's (``settings.SelectionDefaults``)."""

    policy: Literal["argmax", "sample", "vote"] | None = None
    beta: float | None = Field(default=None, ge=0.0, le=1000.0)
    seed: int | None = None
    extract: str | None = Field(default=None, max_length=2000)
    tie_break: Literal["logprob", "index"] | None = None
    """Between equal scores: the higher mean token logprob, or (``index``, which spares the
    engine computing logprobs) the lower index."""

    def fields(self) -> dict[str, Any]:
        """The fields the client set, as ``JobRequest`` ``selection`` takes them."""
        return self.model_dump(exclude_none=True)


class EarlyExit(Strict):
    """Stop generating once a candidate scores at least ``min_score`` and passes the required."""

    min_score: float = Field(default=1.0, ge=0.0, le=1.0)


class BestOfKExtras(BaseModel):
    """bestofk's fields on the OpenAI and Anthropic requests (the clients' extra body)."""

    best_of: int | None = Field(default=None, ge=1)
    verifiers: VerifierSpecs | None = None
    profile: str | None = None
    selection: Selection | None = None
    early_exit: EarlyExit | None = None
    adaptive: AdaptiveField = None
    """Sample in waves up to ``best_of`` (``true``: the default tuning)."""
    budget: Budget | None = None
    confidence: ConfidenceField = None
    """Cut candidates whose confidence falls below a warm-up wave's (``true``: defaults)."""
    return_candidates: bool = True

    def job_fields(self) -> dict[str, Any]:
        """What ``JobRequest`` takes of them."""
        return {
            "k": self.best_of,
            "verifiers": list(self.verifiers or ()),
            "profile": self.profile,
            "selection": self.selection.fields() if self.selection else None,
            "early_exit_min_score": self.early_exit.min_score if self.early_exit else None,
            **adaptive_fields(self.adaptive, self.budget),
            "confidence": confidence_field(self.confidence),
        }


def adaptive_fields(adaptive: bool | Adaptive | None, budget: Budget | None) -> dict[str, Any]:
    """``JobRequest``'s ``adaptive`` and ``budget`` from the request's fields."""
    return {
        "adaptive": adaptive.model_dump(exclude_unset=True)
        if isinstance(adaptive, Adaptive)
        else adaptive,
        "budget": budget.model_dump(exclude_unset=True) if budget is not None else None,
    }


def confidence_field(confidence: bool | Confidence | None) -> bool | dict[str, Any] | None:
    """``JobRequest``'s ``confidence`` from the request's field."""
    if isinstance(confidence, Confidence):
        return confidence.model_dump(exclude_unset=True)
    return confidence


class _Common(Strict):
    prompt: str | None = None
    messages: list[Message] | None = Field(default=None, min_length=1)
    model: str | None = None
    verifiers: VerifierSpecs | None = None
    profile: str | None = None
    selection: Selection | None = None
    return_candidates: bool = True
    timeout_s: float | None = Field(default=None, gt=0.0)
    """Lower the server's deadline for this request (never raises it)."""


class GenerateRequest(_Common):
    """Sample K candidates, verify, return the best. Exactly one of prompt/messages."""

    k: int | None = Field(default=None, ge=1)
    sampling: Sampling = Field(default_factory=Sampling)
    early_exit: EarlyExit | None = None
    adaptive: AdaptiveField = None
    """Sample in waves up to ``k`` (``true``: the default tuning); None: the profile's."""
    budget: Budget | None = None
    """Caps on the search's completion tokens and sampling time; None: the profile's."""
    confidence: ConfidenceField = None
    """Confidence-aware stopping (DeepConf): a warm-up wave, then watched waves whose
    candidates are cut when their confidence falls below the warm-up's (``true``: the
    defaults); None: the profile's."""

    @model_validator(mode="after")
    def _one_prompt(self) -> GenerateRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of 'prompt' or 'messages'")
        return self


class VerifyRequest(_Common):
    """Score and rank given completions; prompt/messages are optional context for verifiers."""

    candidates: list[str] = Field(min_length=1)

    @model_validator(mode="after")
    def _at_most_one_prompt(self) -> VerifyRequest:
        if self.prompt is not None and self.messages is not None:
            raise ValueError("give at most one of 'prompt' or 'messages'")
        return self


class VerdictOut(BaseModel):
    """One verifier's judgement of one candidate."""

    verifier: str
    score: float
    passed: bool
    detail: str
    latency_ms: float
    error: str | None


class CandidateOut(BaseModel):
    """A candidate with its combined score and verdicts."""

    index: int
    text: str
    """The answer when a reasoning parser split the output, else the whole output."""
    reasoning: str | None
    """The thinking before the answer (a reasoning parser's), else None."""
    reasoning_tokens: int
    score: float
    passed: bool
    finish_reason: str | None
    tokens: int
    mean_logprob: float | None
    tool_calls: list[dict[str, Any]] | None = None
    """The calls a tool parser read from ``text`` (OpenAI's shape), when tools were offered."""
    verdicts: list[VerdictOut]
    cut: bool = False
    """Confidence-aware stopping cut it short (finish_reason ``abort``): its text is partial,
    it has no verdicts, and it is never chosen nor counted in a ``vote``."""
    confidence: float | None = None
    """Its lowest group confidence (DeepConf's: the least mean token confidence over a
    window), with confidence-aware stopping; None otherwise."""


class Stats(BaseModel):
    """What the K candidates looked like."""

    k: int
    """Candidates sampled (for ``/verify``: given)."""
    k_requested: int
    """The K asked for, or the default; greedy sampling (temperature 0) samples 1, and
    load-aware K (``--load-aware-k``) fewer while the engine is saturated."""
    generated: int
    """Candidates the engine finished: fewer than ``k`` after early exit, 0 for ``/verify``."""
    passing: int
    first_sample_passed: bool
    early_exit: bool
    partial: bool
    waves: int
    """Engine streams the candidates came in: adaptive K's waves (else 1; 0 for ``/verify``)."""
    sampled: int
    """Candidates started in the engine: ``k`` unless adaptive K or a budget stopped first
    (``generated`` counts those that finished)."""
    stopped_by: Literal["k", "early_exit", "majority", "budget_tokens", "budget_deadline"] | None
    """Why sampling ended: all K done, a candidate passed, one answer held a clear majority
    (adaptive K), the budget's tokens or deadline; None for ``/verify`` and when the
    request's deadline cut it (``partial``)."""
    cut: int = 0
    """Candidates confidence-aware stopping cut short (listed, marked ``cut``)."""
    confidence_threshold: float | None = None
    """The lowest group confidence below which candidates were cut, as the warm-up wave set
    it; None without confidence-aware stopping (or before a watched wave)."""


class Usage(BaseModel):
    """Tokens: prompt once, completions over all K, and what verifiers generated."""

    prompt_tokens: int
    completion_tokens: int
    verifier_tokens: int
    reasoning_tokens: int
    """Of ``completion_tokens``, those spent before the answers (thinking)."""


class TimingOut(BaseModel):
    """Milliseconds since arrival."""

    queue_ms: float
    first_candidate_ms: float | None
    generate_ms: float
    verify_ms: float
    total_ms: float


class RerankResponse(BaseModel):
    """The chosen completion and everything behind the choice."""

    id: str
    model: str
    text: str
    reasoning: str | None
    index: int
    score: float
    passed: bool
    candidates: list[CandidateOut] | None
    stats: Stats
    usage: Usage
    timing: TimingOut
