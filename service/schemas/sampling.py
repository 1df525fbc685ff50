"""The sampling fields both APIs take, declared once with the bounds vLLM's server applies.

The native API takes them as its ``sampling`` object, the OpenAI API as top-level fields (its
request classes derive from :class:`SamplingFields`). Every field defaults to None, as in
vLLM's OpenAI server: a field left out (or null) gets the profile's default, else the server's
(:class:`bestofk.service.defaults.Defaults` resolves them). The bounds are types of their own,
so the server's and the profiles' defaults (``settings.SamplingDefaults``) are held to them too.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, Field

MAX_STOP = 16

Temperature = Annotated[float, Field(ge=0.0, le=2.0)]
TopP = Annotated[float, Field(gt=0.0, le=1.0)]
TopK = Annotated[int, Field(ge=-1)]
"""vLLM's extension: the k likeliest tokens only; 0 or -1 for all."""
MinP = Annotated[float, Field(ge=0.0, le=1.0)]
RepetitionPenalty = Annotated[float, Field(gt=0.0, allow_inf_nan=False)]
Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]
"""``presence_penalty`` and ``frequency_penalty``."""
MaxTokens = Annotated[int, Field(ge=1)]


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
    """Sampling settings shared by all K candidates; None: the profile's or server's."""

    temperature: Temperature | None = None
    top_p: TopP | None = None
    top_k: TopK | None = None
    """vLLM's extensions (``top_k``, ``min_p``, ``repetition_penalty``), as its server takes
    them. ``top_k``: the k likeliest tokens only; 0 or -1 for all."""
    min_p: MinP | None = None
    repetition_penalty: RepetitionPenalty | None = None
    max_tokens: MaxTokens | None = None
    min_tokens: int | None = Field(default=None, ge=0)
    """vLLM's extension: end-of-sequence is suppressed until this many tokens."""
    stop: Stop = None
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None

    def sampling_fields(self) -> dict[str, Any]:
        """The sampling fields alone, as :class:`JobRequest` ``sampling`` takes them."""
        return {name: getattr(self, name) for name in SamplingFields.model_fields}
