"""From parsed request fields to a :class:`RerankJob`: profiles, defaults and limits applied.

Every API comes through here, so a limit or a profile rule is enforced in one place: routes
pass on what the client sent. K, ``max_tokens``, sampling and selection are resolved by
:class:`bestofk.service.defaults.Defaults` (the request's, else the profile's, else the
server's); the verifiers a request implies (a response schema, a reward label, tools) are
added here, not in the routes.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from bestofk.service.defaults import Defaults
from bestofk.service.engines.base import Engine, Prompt
from bestofk.service.errors import InvalidRequestError, NotFoundError, PayloadTooLargeError
from bestofk.service.labels import Label, label_specs, no_verifier
from bestofk.service.rerank import RerankJob
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
    """``SamplingConfig`` fields as the client sent them; None and missing ones get defaults.
    A ``json_schema`` (OpenAI's ``response_format``) is also a required verifier."""
    verifiers: Sequence[VerifierSpec] = ()
    profile: str | None = None
    selection: Mapping[str, Any] | None = None
    """``SelectionConfig`` fields as the client sent them; None and missing ones get defaults."""
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
    label: Label | None = None
    """A reward request's label (``/get_reward``): the verifiers it asks for are added."""
    timeout_s: float | None = None
    chat_template_kwargs: Mapping[str, Any] | None = None
    """The request's chat template variables, over the profile's (vLLM's field)."""
    arrived: float | None = None
    """``time.perf_counter()`` when the request arrived, so queue time is counted."""


def new_request_id(prefix: str) -> str:
    """A fresh id such as ``gen-3f2a…``."""
    return f"{prefix}-{secrets.token_hex(16)}"


class JobFactory:
    """Holds settings and the parsed profiles."""

    def __init__(self, settings: Settings, engine: Engine) -> None:
        self.settings = settings
        self.defaults = Defaults(settings)
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
        if req.label is not None:
            labelled = label_specs(req.label)
            if not labelled and profile_name is None:
                raise no_verifier(req.label)
            specs += labelled
        schema = (req.sampling or {}).get("json_schema")
        if schema is not None:
            # A response schema is a required verifier too: the constraint holds whatever the
            # engine did with it (decoding where it can).
            specs.append(parse_spec({"type": "json_schema", "schema": schema, "required": True}))
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
        if req.given is not None:
            self._check_given(req.given)
        resolved = self.defaults.resolve(req, profile)
        sampling = resolved.sampling
        timeout = min(req.timeout_s or limits.request_timeout_s, limits.request_timeout_s)
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
        confidence = resolved.confidence
        if confidence is not None and req.given is None:
            # Every candidate's top logprobs, for the watch and the warm-up's calibration; a
            # client that asked fewer sees as many as it asked.
            top = max(sampling.top_logprobs or 0, confidence.top_logprobs)
            sampling = replace(sampling, top_logprobs=top)
        return RerankJob(
            request_id=request_id,
            prompt=prompt,
            k=resolved.k,
            k_requested=resolved.k_requested,
            sampling=sampling,
            specs=specs,
            selection=resolved.selection,
            early_exit_min_score=resolved.early_exit_min_score,
            given=req.given,
            parse_calls=parse,
            timeout_s=timeout,
            profile=profile_name,
            reasoning_parser=(profile.reasoning_parser if profile else None)
            or self.settings.reasoning_parser,
            adaptive=resolved.adaptive,
            budget=resolved.budget,
            confidence=confidence if req.given is None else None,
            arrived=req.arrived if req.arrived is not None else time.perf_counter(),
        )

    def default_k(self, profile: str | None = None) -> int:
        """The K a request without ``k``/``best_of`` gets, server-wide or under ``profile``."""
        return self.defaults.k(self._profile(profile))

    def default_selection(self, profile: str | None = None) -> dict[str, Any]:
        """The selection a request without ``selection`` gets, server-wide or under
        ``profile`` (``bestofk eval`` computes best-of-k offline with it)."""
        config = self.defaults.selection(None, self._profile(profile))
        return {"policy": config.policy, "beta": config.beta, "tie_break": config.tie_break}

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


def _parse_profile(name: str, profile: Profile) -> list[VerifierSpec]:
    try:
        return [
            parse_spec(raw, ("profiles", name, "verifiers", i))
            for i, raw in enumerate(profile.verifiers)
        ]
    except InvalidVerifierSpecError as exc:
        raise ValueError(f"invalid profile {name!r}: {exc}") from None
