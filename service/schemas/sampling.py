"""The sampling fields both APIs take, declared once with the bounds vLLM's server applies.

The native API takes them as its ``sampling`` object, the OpenAI API as top-level fields (its
request classes derive from :class:`SamplingFields`). A field left out gets the engine's
default and a null one too, as vLLM's OpenAI server treats null; ``max_tokens`` left out is the
server's ``default_max_tokens``. :meth:`JobFactory.build` turns them into a ``SamplingConfig``.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, Field

from bestofk.service.engines.base import SamplingConfig

MAX_STOP = 16
_DEFAULT = SamplingConfig()


def _check_stop(value: str | list[str] | None) -> str | list[str] | None:
    stops = [value] if isinstance(value, str) else value or []
    if len(stops) > MAX_STOP:
        raise ValueError(f"at most {MAX_STOP} stop strings")
    if any(not s for s in stops):
        raise ValueError("a stop string must not be empty")  # vLLM refuses it
    return value


Stop = Annotated[str | list[str] | None, AfterValidator(_check_stop)]
"""``stop``: one string or a list of at most 16, none empty."""


class SamplingFields(BaseModel):
    """Sampling settings shared by all K candidates."""

    temperature: float | None = Field(default=_DEFAULT.temperature, ge=0.0, le=2.0)
    top_p: float | None = Field(default=_DEFAULT.top_p, gt=0.0, le=1.0)
    top_k: int | None = Field(default=_DEFAULT.top_k, ge=-1)
    """vLLM's extensions (``top_k``, ``min_p``, ``repetition_penalty``), as its server takes
    them. ``top_k``: the k likeliest tokens only; 0 or -1 for all."""
    min_p: float | None = Field(default=_DEFAULT.min_p, ge=0.0, le=1.0)
    repetition_penalty: float | None = Field(
        default=_DEFAULT.repetition_penalty, gt=0.0, allow_inf_nan=False
    )
    max_tokens: int | None = Field(default=None, ge=1)
    min_tokens: int = Field(default=_DEFAULT.min_tokens, ge=0)
    """vLLM's extension: end-of-sequence is suppressed until this many tokens."""
    stop: Stop = None
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    presence_penalty: float | None = Field(default=_DEFAULT.presence_penalty, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=_DEFAULT.frequency_penalty, ge=-2.0, le=2.0)

    def sampling_fields(self) -> dict[str, Any]:
        """The sampling fields alone, as :class:`JobRequest` ``sampling`` takes them."""
        return {name: getattr(self, name) for name in SamplingFields.model_fields}
