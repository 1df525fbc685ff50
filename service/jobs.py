"""From parsed request fields to a :class:`RerankJob`: profiles, defaults and limits applied.

Both APIs come through here, so a limit or a profile rule is enforced in one place, and K,
``max_tokens`` and the selection are decided here alone (the request's, else the profile's
where it sets one, else the server's): routes pass on what the client sent.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from bestofk.service.adaptive import AdaptiveConfig, Budget
from bestofk.service.confidence import ConfidenceConfig
from bestofk.service.engines.base import Engine, Prompt, SamplingConfig
from bestofk.service.errors import InvalidRequestError, NotFoundError, PayloadTooLargeError
from bestofk.service.pipeline import RerankJob
from bestofk.service.schemas.adaptive import Adaptive
from bestofk.service.schemas.confidence import Confidence
from bestofk.service.selection import SelectionConfig
from bestofk.service.settings import Profile, Settings
from bestofk.service.tools import ToolChoice, ToolParsing
from bestofk.verifiers.base import VerifierSpec
from bestofk.verifiers.registry import InvalidVerifierSpecError, parse_spec


@dataclass(frozen=True, slots=True)
class JobRequest:
    """The API-neutral fields of a request, before defaults and limits."""

    prompt: Prompt | None
    model: str | None = None
    k: int | None = None
    n: int = 1
    """Candidates the client wants back (OpenAI's ``n``): a K left to the default is at least
    this."""
    sampling: Mapping[str, Any] | None = None
    """``SamplingConfig`` fields as the client sent them; None and missing ones get defaults."""
    verifiers: Sequence[VerifierSpec] = ()
    profile: str | None = None
    selection: Mapping[str, Any] | None = None
    early_exit_min_score: float | None = None
    adaptive: bool | Mapping[str, Any] | None = None
    """Adaptive K: True, False, or its tuning fields (``AdaptiveConfig``); None: the
    profile's."""
    budget: Mapping[str, Any] | None = None
    """``Budget`` fields; None: the profile's."""
    confidence: bool | Mapping[str, Any] | None = None
    """Confidence-aware stopping: True, False, or its fields (``ConfidenceConfig``); None: the
    profile's."""
    tool_choice: ToolChoice | None = None
    """With ``prompt.tools``: OpenAI's ``tool_choice``; None is ``auto``, as OpenAI's default."""
    given: Sequence[str] | None = None
    timeout_s: float | None = None
    chat_template_kwargs: Mapping[str, Any] | None = None
    """The request's chat template variables, over the profile's (vLLM's field)."""
    arrived: float | None = None
    """``time.perf_counter()`` when the request arrived, so queue time is counted."""


def new_request_id(prefix: str) -> str:
    """A fresh id such as ``gen-3f2a…``."""
    return f"{prefix}-{uuid.uuid4().hex}"


class JobFactory:
    """Holds settings and the parsed profiles."""

    def __init__(self, settings: Settings, engine: Engine) -> None:
        self.settings = settings
        self._engine = engine
        self.tools = ToolParsing.from_settings(settings, engine)
        self.profile_specs = {
            name: _parse_profile(name, profile) for name, profile in settings.profiles.items()
        }

    @property
    def model_name(self) -> str:
        """The served model's name (a remote engine learns it from its backends)."""
        return self._engine.model_name

    def split_model(self, model: str | None) -> tuple[str | None, str | None]:
        """``NAME@PROFILE`` → (NAME, PROFILE); checks the name is the served model."""
        if not model:
            return None, None
        name, _, profile = model.partition("@")
        if name and name != self.model_name:
            raise NotFoundError(
                f"model {name!r} is not served here; the model is {self.model_name!r}",
                param="model",
                code="model_not_found",
            )
        return name or None, profile or None

    def build(self, request_id: str, req: JobRequest) -> RerankJob:
        """Resolve the profile, apply defaults and enforce every limit."""
        limits = self.settings.limits
        _, model_profile = self.split_model(req.model)
        profile_name = req.profile or model_profile
        profile = self._profile(profile_name)
        specs = [*self.profile_specs.get(profile_name or "", []), *req.verifiers]
        if len(specs) > limits.max_verifiers:
            raise InvalidRequestError(
                f"{len(specs)} verifiers exceed the limit of {limits.max_verifiers}",
                param="verifiers",
            )
        prompt = req.prompt or Prompt(text="")
        self._check_prompt(prompt)
        template_kwargs = {
            **((profile.chat_template_kwargs or {}) if profile else {}),
            **(req.chat_template_kwargs or {}),
        }
        if template_kwargs and prompt.messages is not None:
            prompt = replace(prompt, chat_template_kwargs=template_kwargs)
        k = self._k(req, profile)
        if req.given is not None:
            self._check_given(req.given)
        timeout = min(req.timeout_s or limits.request_timeout_s, limits.request_timeout_s)
        min_score = req.early_exit_min_score
        if min_score is None and profile is not None:
            min_score = profile.early_exit_min_score
        selection = self._selection(req.selection, profile)
        sampling = replace(self._sampling(req.sampling or {}), logprobs=selection.by_logprob)
        parse = None
        if prompt.tools:
            choice = req.tool_choice if req.tool_choice is not None else "auto"
            self.tools.check(prompt.tools, choice)
            if choice != "none":
                # Every candidate's calls are checked, unasked; a malformed call ranks below
                # every well-formed candidate.
                tools = [dict(t) for t in prompt.tools]
                check = {"type": "tool_calls", "tools": tools, "tool_choice": choice}
                specs.append(parse_spec({**check, "required": True}, ("tools",)))
                parse = self.tools.parser_for(prompt.tools, choice)
                sampling = replace(sampling, skip_special_tokens=False)
        confidence = _confidence(req.confidence, profile)
        if confidence is not None and req.given is None:
            # Every candidate's top logprobs, for the watch and the warm-up's calibration; a
            # client that asked fewer sees as many as it asked.
            top = max(sampling.top_logprobs or 0, confidence.top_logprobs)
            sampling = replace(sampling, top_logprobs=top)
        return RerankJob(
            request_id=request_id,
            prompt=prompt,
            # Greedy decoding has one candidate: K more would be K copies of it (vLLM refuses
            # n > 1 outright). Sample one; stats.k_requested keeps what was asked.
            k=1 if sampling.greedy and req.given is None else k,
            k_requested=k,
            sampling=sampling,
            specs=specs,
            selection=selection,
            early_exit_min_score=min_score,
            given=req.given,
            parse_calls=parse,
            timeout_s=timeout,
            profile=profile_name,
            reasoning_parser=(profile.reasoning_parser if profile else None)
            or self.settings.reasoning_parser,
            adaptive=_adaptive(req.adaptive, profile),
            budget=_budget(req.budget, profile),
            confidence=confidence if req.given is None else None,
            arrived=req.arrived if req.arrived is not None else time.perf_counter(),
        )

    def _k(self, req: JobRequest, profile: Profile | None) -> int:
        """The request's K, else max(n, the profile's or server's default K)."""
        limits = self.settings.limits
        if req.given is not None:
            return len(req.given)
        if req.k is not None:
            if req.k > limits.max_k:
                raise InvalidRequestError(
                    f"k={req.k} exceeds the limit of {limits.max_k}", param="k"
                )
            return req.k
        if req.n > limits.max_k:
            raise InvalidRequestError(f"n={req.n} exceeds the limit of {limits.max_k}", param="n")
        # A default the operator set above the limit is capped, never a refusal of a request
        # that asked for nothing.
        default = (profile.k if profile else None) or self.settings.default_k
        return max(req.n, min(default, limits.max_k))

    def default_k(self, profile: str | None = None) -> int:
        """The K a request without ``k``/``best_of`` gets, server-wide or under ``profile``."""
        return self._k(JobRequest(prompt=None), self._profile(profile))

    def _profile(self, name: str | None) -> Profile | None:
        if name is None:
            return None
        profile = self.settings.profiles.get(name)
        if profile is None:
            known = ", ".join(sorted(self.settings.profiles)) or "none configured"
            raise NotFoundError(
                f"unknown profile {name!r} (known: {known})",
                param="profile",
                code="profile_not_found",
            )
        return profile

    def _check_prompt(self, prompt: Prompt) -> None:
        limits = self.settings.limits
        if prompt.messages is not None:
            if len(prompt.messages) > limits.max_messages:
                raise PayloadTooLargeError(
                    f"{len(prompt.messages)} messages exceed the limit of {limits.max_messages}",
                    param="messages",
                )
            size = sum(len(str(m.get("content") or "")) for m in prompt.messages)
            param = "messages"
        else:
            size, param = len(prompt.text or ""), "prompt"
        if size > limits.max_prompt_chars:
            raise PayloadTooLargeError(
                f"the prompt has {size} characters; the limit is {limits.max_prompt_chars}",
                param=param,
            )

    def _check_given(self, given: Sequence[str]) -> None:
        limits = self.settings.limits
        if len(given) > limits.max_candidates:
            raise InvalidRequestError(
                f"{len(given)} candidates exceed the limit of {limits.max_candidates}",
                param="candidates",
            )
        for i, text in enumerate(given):
            if len(text) > limits.max_candidate_chars:
                raise PayloadTooLargeError(
                    f"candidate {i} has {len(text)} characters; "
                    f"the limit is {limits.max_candidate_chars}",
                    param=f"candidates.{i}",
                )

    def _sampling(self, raw: Mapping[str, Any]) -> SamplingConfig:
        fields = {k: v for k, v in raw.items() if v is not None}
        limit = self.settings.limits.max_tokens
        # A client that asks for nothing gets the default, never a refusal for the server's
        # own choice when an operator set the limit below it.
        max_tokens = fields.pop("max_tokens", None) or min(self.settings.default_max_tokens, limit)
        if max_tokens > limit:
            raise InvalidRequestError(
                f"max_tokens={max_tokens} exceeds the limit of {self.settings.limits.max_tokens}",
                param="max_tokens",
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
            **fields,
        )

    def _selection(self, raw: Mapping[str, Any] | None, profile: Profile | None) -> SelectionConfig:
        # Field by field: the server's defaults, then the profile's, then the request's.
        fields = self.settings.selection.model_dump()
        if profile is not None and profile.selection is not None:
            fields |= profile.selection.model_dump(exclude_unset=True)
        config = SelectionConfig(**(fields | dict(raw or {})))
        if config.extract is not None:
            try:
                parse_spec({"type": "regex", "pattern": config.extract}, ("selection",))
            except InvalidVerifierSpecError as exc:
                raise InvalidRequestError(str(exc), param="selection.extract") from None
        return config


def _adaptive(
    raw: bool | Mapping[str, Any] | None, profile: Profile | None
) -> AdaptiveConfig | None:
    """The request's adaptive K, else the profile's; its tuning fields over the profile's."""
    chosen: bool | Mapping[str, Any] | Adaptive | None = raw
    if chosen is None and profile is not None:
        chosen = profile.adaptive
    if chosen is None or chosen is False:
        return None
    tuned = profile.adaptive if profile is not None else None
    base = tuned.model_dump(exclude_unset=True) if isinstance(tuned, Adaptive) else {}
    if isinstance(chosen, Adaptive):
        chosen = chosen.model_dump(exclude_unset=True)
    return AdaptiveConfig(**(base if chosen is True else base | dict(chosen)))


def _confidence(
    raw: bool | Mapping[str, Any] | None, profile: Profile | None
) -> ConfidenceConfig | None:
    """The request's confidence-aware stopping, else the profile's; its fields over the
    profile's."""
    chosen: bool | Mapping[str, Any] | Confidence | None = raw
    if chosen is None and profile is not None:
        chosen = profile.confidence
    if chosen is None or chosen is False:
        return None
    tuned = profile.confidence if profile is not None else None
    base = tuned.model_dump(exclude_unset=True) if isinstance(tuned, Confidence) else {}
    if isinstance(chosen, Confidence):
        chosen = chosen.model_dump(exclude_unset=True)
    return ConfidenceConfig(**(base if chosen is True else base | dict(chosen)))


def _budget(raw: Mapping[str, Any] | None, profile: Profile | None) -> Budget | None:
    """The request's budget fields over the profile's."""
    base = profile.budget.model_dump(exclude_unset=True) if profile and profile.budget else {}
    fields = base | dict(raw or {})
    return Budget(**fields) if fields else None


def _parse_profile(name: str, profile: Profile) -> list[VerifierSpec]:
    try:
        return [
            parse_spec(raw, ("profiles", name, "verifiers", i))
            for i, raw in enumerate(profile.verifiers)
        ]
    except InvalidVerifierSpecError as exc:
        raise ValueError(f"invalid profile {name!r}: {exc}") from None
