"""Request bodies of the native API (``/generate``, ``/verify``); the response,
``RerankResponse``, is the output family's (``schemas/output.py``)."""

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
