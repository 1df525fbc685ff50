"""The one place a request's left-out fields get their values: the request's, else its
profile's, else the server's, for K, ``max_tokens``, sampling, selection, the early exit,
adaptive K, the budget and confidence-aware stopping.

As vLLM's ``to_sampling_params(max_tokens, default_sampling_params)`` with its single
``get_max_tokens``: the routes pass on what the client sent (None for what it did not), and
:meth:`Defaults.resolve` alone fills in the rest and checks it against the limits. The
built-in values are the inner dataclasses' own (``SamplingConfig``, ``SelectionConfig``), which
``Settings`` reads as the server's unless configured otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel

from bestofk.service.adaptive import AdaptiveConfig, Budget
from bestofk.service.confidence import ConfidenceConfig
from bestofk.service.engines.base import SamplingConfig
from bestofk.service.errors import InvalidRequestError
from bestofk.service.selection import SelectionConfig
from bestofk.service.settings import Profile, Settings
from bestofk.verifiers.registry import InvalidVerifierSpecError, parse_spec

if TYPE_CHECKING:
    from bestofk.service.jobs import JobRequest


@dataclass(frozen=True, slots=True)
class Resolved:
    """K, sampling, selection, the early exit and how the search spends its compute, every
    default applied and limit checked."""

    k: int
    """Candidates to sample (or given): 1 for greedy sampling, which has only one."""
    k_requested: int
    """The K asked for, or the default."""
    sampling: SamplingConfig
    selection: SelectionConfig
    early_exit_min_score: float | None
    adaptive: AdaptiveConfig | None = None
    budget: Budget | None = None
    confidence: ConfidenceConfig | None = None


def get_max_tokens(requested: int | None, default: int, limit: int) -> int:
    """The request's ``max_tokens``, refused past ``limit``; else the default, capped at it
    (a client that asks for nothing is never refused for the server's own choice)."""
    if requested is None:
        return min(default, limit)
    if requested > limit:
        raise InvalidRequestError(
            f"max_tokens={requested} exceeds the limit of {limit}", param="max_tokens"
        )
    return requested


class Defaults:
    """The server's defaults, and each profile's over them."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def resolve(self, req: JobRequest, profile: Profile | None) -> Resolved:
        """request > profile > server, for K, ``max_tokens``, sampling, selection and the
        early exit."""
        k = self._k(req.k, req.n, req.given, profile)
        selection = self.selection(req.selection, profile)
        sampling = self._sampling(req.sampling or {}, profile, selection)
        min_score = req.early_exit_min_score
        if min_score is None and profile is not None:
            min_score = profile.early_exit_min_score
        return Resolved(
            # Greedy decoding has one candidate: K more would be K copies of it (vLLM refuses
            # n > 1 outright). Sample one; stats.k_requested keeps what was asked.
            k=1 if sampling.greedy and req.given is None else k,
            k_requested=k,
            sampling=sampling,
            selection=selection,
            early_exit_min_score=min_score,
            adaptive=switched(req.adaptive, profile and profile.adaptive, AdaptiveConfig),
            budget=_budget(req.budget, profile),
            confidence=switched(req.confidence, profile and profile.confidence, ConfidenceConfig),
        )

    def k(self, profile: Profile | None = None) -> int:
        """The K a request without ``k``/``best_of`` gets, server-wide or under ``profile``."""
        return self._k(None, 1, None, profile)

    def selection(
        self, asked: Mapping[str, Any] | None, profile: Profile | None = None
    ) -> SelectionConfig:
        """Field by field: the server's, then the profile's, then the request's."""
        fields = self.settings.selection.model_dump()
        if profile is not None and profile.selection is not None:
            fields |= profile.selection.model_dump(exclude_unset=True)
        fields |= {k: v for k, v in (asked or {}).items() if v is not None}
        config = SelectionConfig(**fields)
        if config.extract is not None:
            try:
                parse_spec({"type": "regex", "pattern": config.extract}, ("selection",))
            except InvalidVerifierSpecError as exc:
                raise InvalidRequestError(str(exc), param="selection.extract") from None
        return config

    def _k(
        self, k: int | None, n: int, given: Sequence[str] | None, profile: Profile | None
    ) -> int:
        """The request's K (``/verify``: its candidates), else max(n, the profile's or the
        server's default K)."""
        limit = self.settings.limits.max_k
        if given is not None:
            return len(given)
        if k is not None:
            if k > limit:
                raise InvalidRequestError(f"k={k} exceeds the limit of {limit}", param="k")
            return k
        if n > limit:
            raise InvalidRequestError(f"n={n} exceeds the limit of {limit}", param="n")
        # A default the operator set above the limit is capped, never a refusal of a request
        # that asked for nothing.
        default = (profile.k if profile else None) or self.settings.default_k
        return max(n, min(default, limit))

    def _sampling(
        self, asked: Mapping[str, Any], profile: Profile | None, selection: SelectionConfig
    ) -> SamplingConfig:
        """Field by field as :meth:`selection`; ``max_tokens`` by :func:`get_max_tokens`."""
        fields: dict[str, Any] = self.settings.sampling.model_dump()
        if profile is not None and profile.sampling is not None:
            fields |= profile.sampling.model_dump(exclude_unset=True)
        fields |= {k: v for k, v in asked.items() if v is not None}
        default = (profile.max_tokens if profile else None) or self.settings.default_max_tokens
        max_tokens = get_max_tokens(
            fields.pop("max_tokens", None), default, self.settings.limits.max_tokens
        )
        if fields.get("min_tokens", 0) > max_tokens:
            raise InvalidRequestError(
                f"min_tokens={fields['min_tokens']} exceeds max_tokens={max_tokens}",
                param="min_tokens",
            )
        stop = fields.pop("stop", ())
        return SamplingConfig(
            max_tokens=max_tokens,
            stop=(stop,) if isinstance(stop, str) else tuple(stop),
            # The tie-break decides whether the engine computes the sampled tokens' logprobs.
            logprobs=selection.by_logprob,
            **fields,
        )


Config = TypeVar("Config")


def switched(
    asked: bool | Mapping[str, Any] | None,
    profiles: bool | BaseModel | None,
    config: Callable[..., Config],
) -> Config | None:
    """A feature a request turns on with ``true`` or an object of tuning fields (``adaptive``,
    ``confidence``): the request's, else the profile's; ``false`` turns the profile's off, and
    the request's tuning fields go over the profile's one by one."""
    chosen = profiles if asked is None else asked
    if chosen is None or chosen is False:
        return None
    base = profiles.model_dump(exclude_unset=True) if isinstance(profiles, BaseModel) else {}
    if isinstance(chosen, BaseModel):
        chosen = chosen.model_dump(exclude_unset=True)
    return config(**(base if chosen is True else base | dict(chosen)))


def _budget(asked: Mapping[str, Any] | None, profile: Profile | None) -> Budget | None:
    """The request's budget fields over the profile's."""
    base = profile.budget.model_dump(exclude_unset=True) if profile and profile.budget else {}
    fields = base | dict(asked or {})
    return Budget(**fields) if fields else None
