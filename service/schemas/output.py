"""The output family: a finished request's fields, declared once.

:func:`results.as_data <bestofk.service.results.as_data>` gives a result in these models'
shape, key for key. The native API answers with it in :class:`RerankResponse`'s shape (its
``response_model``, serialized without a second validation), the OpenAI and Anthropic routes
embed the same data as their ``bestofk`` block, and
the record (:mod:`records.format <bestofk.service.records.format>`) extends the models with
the few fields only a record keeps.

A default here is for record lines written before the field was kept: ``as_data`` gives every
field, so every response has every key, and the OpenAPI schema marks each one required.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from bestofk.service.adaptive import StopReason


class Output(BaseModel):
    """Base of the output models: a field with a default is still in every response."""

    model_config = ConfigDict(json_schema_serialization_defaults_required=True)


class VerdictOut(Output):
    """One verifier's judgement of one candidate."""

    verifier: str
    score: float
    passed: bool
    detail: str = ""
    latency_ms: float = 0.0
    error: str | None = None


class CandidateOut(Output):
    """A candidate with its combined score and verdicts."""

    index: int
    text: str
    """The answer when a reasoning parser split the output, else the whole output."""
    reasoning: str | None = None
    """The thinking before the answer (a reasoning parser's), else None."""
    reasoning_tokens: int = 0
    score: float
    passed: bool
    """Every verifier passed (and there was at least one)."""
    finish_reason: str | None = None
    tokens: int = 0
    mean_logprob: float | None = None
    tool_calls: list[dict[str, Any]] | None = None
    """The calls a tool parser read from ``text`` (OpenAI's shape), when tools were offered."""
    verdicts: list[VerdictOut]
    cut: bool = False
    """Confidence-aware stopping cut it short (finish_reason ``abort``): its text is partial,
    it has no verdicts, and it is never chosen nor counted in a ``vote``."""
    confidence: float | None = None
    """Its lowest group confidence (DeepConf's: the least mean token confidence over a
    window), with confidence-aware stopping; None otherwise."""


class Stats(Output):
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
    waves: int = 1
    """Engine streams the candidates came in: adaptive K's waves (else 1; 0 for ``/verify``)."""
    sampled: int
    """Candidates started in the engine: ``k`` unless adaptive K or a budget stopped first
    (``generated`` counts those that finished)."""
    stopped_by: StopReason | None = None
    """Why sampling ended: all K done, a candidate passed, one answer held a clear majority
    (adaptive K), the budget's tokens or deadline; None for ``/verify`` and when the
    request's deadline cut it (``partial``)."""
    cut: int = 0
    """Candidates confidence-aware stopping cut short (listed, marked ``cut``)."""
    confidence_threshold: float | None = None
    """The lowest group confidence below which candidates were cut, as the warm-up wave set
    it; None without confidence-aware stopping (or before a watched wave)."""


class Usage(Output):
    """Tokens: prompt once, completions over all K, and what verifiers generated."""

    prompt_tokens: int
    completion_tokens: int
    verifier_tokens: int
    reasoning_tokens: int = 0
    """Of ``completion_tokens``, those spent before the answers (thinking)."""


class TimingOut(Output):
    """Milliseconds since arrival."""

    queue_ms: float
    first_candidate_ms: float | None
    generate_ms: float
    verify_ms: float
    total_ms: float


class RerankResponse(Output):
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
