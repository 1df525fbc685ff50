"""Verifier types by name: the built-ins plus whatever installed packages register.

Third-party packages add a verifier with an entry point in the ``bestofk.verifiers`` group whose
value is a class with a ``Spec`` (a :class:`~bestofk.verifiers.base.VerifierSpec` subclass) and a
constructor ``(spec, resources)``, implementing :class:`~bestofk.verifiers.base.Verifier` or
:class:`~bestofk.verifiers.base.SetVerifier`. The entry point's name is the ``type`` clients use.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterable, Mapping
from functools import cache
from importlib.metadata import entry_points
from typing import Any, TypeGuard

from pydantic import ValidationError

from bestofk.verifiers.base import SetVerifier, Verifier, VerifierResources, VerifierSpec

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "bestofk.verifiers"

_BUILTINS = {
    "regex": "bestofk.verifiers.regex:RegexVerifier",
    "exact": "bestofk.verifiers.exact:ExactVerifier",
    "json_schema": "bestofk.verifiers.json_schema:JsonSchemaVerifier",
    "style": "bestofk.verifiers.style:StyleVerifier",
    "unit_tests": "bestofk.verifiers.unit_tests:UnitTestsVerifier",
    "judge": "bestofk.verifiers.judge:judge",
    "reward_model": "bestofk.verifiers.reward_model:RewardModelVerifier",
    "vote": "bestofk.verifiers.vote:VoteVerifier",
    "math": "bestofk.verifiers.math_verifier:MathVerifier",
    "tool_calls": "bestofk.verifiers.tool_calls:ToolCallsVerifier",
}


class UnknownVerifierError(ValueError):
    """A spec names a verifier type that is neither built in nor installed."""


class InvalidVerifierSpecError(ValueError):
    """A spec's fields do not validate; ``loc`` says which field, for the client's error."""

    def __init__(self, message: str, loc: tuple[str | int, ...]) -> None:
        super().__init__(message)
        self.loc = loc


def _load(target: str) -> Any:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


@cache
def available() -> dict[str, str]:
    """Every known verifier type mapped to its ``module:Class``; entry points may override."""
    table = dict(_BUILTINS)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        table[ep.name] = ep.value
    return table


@cache
def verifier_class(type_name: str) -> Any:
    """The class implementing ``type_name``; raises UnknownVerifierError with the choices."""
    target = available().get(type_name)
    if target is None:
        known = ", ".join(sorted(available()))
        raise UnknownVerifierError(f"unknown verifier type {type_name!r}; known types: {known}")
    return _load(target)


def parse_spec(raw: Mapping[str, Any], loc: tuple[str | int, ...] = ()) -> VerifierSpec:
    """Validate a raw spec dict against its type's Spec model."""
    type_name = raw.get("type")
    if not isinstance(type_name, str):
        raise InvalidVerifierSpecError("verifier spec needs a string 'type'", (*loc, "type"))
    try:
        cls = verifier_class(type_name)
    except UnknownVerifierError as exc:
        raise InvalidVerifierSpecError(str(exc), (*loc, "type")) from None
    try:
        spec: VerifierSpec = cls.Spec.model_validate(dict(raw))
    except ValidationError as exc:
        err = exc.errors()[0]
        field_loc = (*loc, *err["loc"])
        where = ".".join(str(p) for p in field_loc)
        raise InvalidVerifierSpecError(f"{where}: {err['msg']}", field_loc) from None
    except RecursionError:
        # A validator walking a deeply nested value (a JSON Schema hundreds of levels deep).
        where = ".".join(str(p) for p in loc) or "verifier"
        raise InvalidVerifierSpecError(f"{where}: nested too deeply", loc) from None
    return spec


def build(
    specs: Iterable[VerifierSpec], resources: VerifierResources
) -> list[Verifier | SetVerifier]:
    """Instantiate verifiers from validated specs."""
    return [verifier_class(spec.type)(spec, resources) for spec in specs]


_POINTWISE: dict[type, bool] = {}


def scores_one(verifier: Verifier | SetVerifier) -> TypeGuard[Verifier]:
    """Whether ``verifier`` scores one candidate at a time (a :class:`Verifier`), not the whole
    set (a :class:`SetVerifier`). Decided once per class: a runtime protocol check walks the
    protocol's members on every call, and every request asks for each of its verifiers."""
    cls = type(verifier)
    pointwise = _POINTWISE.get(cls)
    if pointwise is None:
        pointwise = _POINTWISE[cls] = isinstance(verifier, Verifier)
    return pointwise
