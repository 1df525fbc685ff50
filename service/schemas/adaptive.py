"""The ``adaptive`` and ``budget`` request fields (native body, OpenAI/Anthropic extra body,
profiles); :mod:`bestofk.service.adaptive` holds what they mean."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field


class Adaptive(BaseModel):
    """Adaptive K's tuning: ``"adaptive": true`` takes these defaults."""

    model_config = ConfigDict(extra="forbid")

    first_wave: int = Field(default=3, ge=1, le=1024)
    """Candidates in the first wave."""
    growth: float = Field(default=1.0, ge=1.0, le=16.0)
    """Each next wave is the last one times this, rounded up (1: equal waves; 2: doubling)."""
    majority: float = Field(default=2 / 3, gt=0.0, le=1.0)
    """``vote`` and verifier-less runs stop once one answer holds this share of the candidates
    so far…"""
    min_votes: int = Field(default=3, ge=1)
    """…and at least this many of them."""


class Budget(BaseModel):
    """Caps on one request's search; past one, the best candidate so far is chosen."""

    model_config = ConfigDict(extra="forbid")

    max_tokens: int | None = Field(default=None, ge=1)
    """Completion tokens over all candidates, aborted ones included."""
    deadline_s: float | None = Field(default=None, gt=0.0)
    """Seconds of sampling from the request's start."""


AdaptiveField = Annotated[Adaptive | bool | None, Field(union_mode="left_to_right")]
"""``adaptive``: an object of tuning fields (its errors name them), ``true`` for the defaults,
``false`` to turn a profile's off."""
