"""The ``confidence`` request field (native body, OpenAI/Anthropic extra body, profiles);
:mod:`bestofk.service.confidence` holds what it means."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from bestofk.service.confidence import TOP_LOGPROBS, WINDOW


class Confidence(BaseModel):
    """Confidence-aware stopping (DeepConf): ``"confidence": true`` takes these defaults."""

    model_config = ConfigDict(extra="forbid")

    keep: Literal["low", "high"] | Annotated[float, Field(gt=0.0, le=1.0)] = "high"
    """The share of the warm-up's traces the threshold would keep: ``high`` (90 %), ``low``
    (10 %), or a share."""
    warmup: int | None = Field(default=None, ge=1, le=1024)
    """Candidates in the warm-up wave; None: adaptive K's first wave, else half of K."""
    window: int = Field(default=WINDOW, ge=1, le=32768)
    """Tokens per group (DeepConf's sliding window)."""
    top_logprobs: int = Field(default=TOP_LOGPROBS, ge=1, le=20)
    """Alternatives per token a token's confidence is the mean over (vLLM returns at most 20
    unless its ``max_logprobs`` says more)."""


ConfidenceField = Annotated[Confidence | bool | None, Field(union_mode="left_to_right")]
"""``confidence``: an object of tuning fields, ``true`` for the defaults, ``false`` to turn a
profile's off."""
