"""What an OpenRLHF reward label asks to check (``POST /get_reward``).

The protocol carries only a string label per sample, so the rule is explicit:

- a label that is a JSON verifier spec, or a JSON list of them, adds those (per-sample checks,
  e.g. unit tests, in the dataset's ``--label_key`` column);
- any other non-empty label is the reference answer: ``{"type": "exact", "reference": label}``
  (the common case: math datasets label each prompt with its answer);
- an empty or null label adds nothing; a sample with no verifier at all (no label's and no
  profile's) is a 400.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from bestofk.service.errors import InvalidRequestError
from bestofk.verifiers.base import VerifierSpec
from bestofk.verifiers.registry import InvalidVerifierSpecError, parse_spec


@dataclass(frozen=True, slots=True)
class Label:
    """The label the samples of one reward job share."""

    text: str | None
    sample: int
    """The first of those samples' index in the request, which errors name."""


def label_specs(label: Label) -> list[VerifierSpec]:
    """The verifiers ``label`` asks for (see the module docstring)."""
    text, i = label.text, label.sample
    if not text:
        return []
    raw: Any = None
    if text.lstrip()[:1] in ("{", "["):
        try:
            raw = json.loads(text)
        except json.JSONDecodeError:
            raw = None
    if isinstance(raw, dict) and "type" in raw:
        raw = [raw]
    if not (isinstance(raw, list) and raw and all(isinstance(r, dict) for r in raw)):
        raw = [{"type": "exact", "reference": text}]
    try:
        return [parse_spec(r, ("labels", i, j)) for j, r in enumerate(raw)]
    except InvalidVerifierSpecError as exc:
        raise InvalidRequestError(str(exc), param=f"labels.{i}") from None


def no_verifier(label: Label) -> InvalidRequestError:
    """The error for a sample that neither its label nor a profile gives a verifier."""
    i = label.sample
    return InvalidRequestError(
        f"sample {i} has no verifier: give a label (a reference answer or a JSON verifier "
        "spec) or a server profile (?profile=NAME)",
        param=f"labels.{i}",
    )
