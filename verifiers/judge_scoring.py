"""Reading a judge model's answer: from the first generated token's logprobs, else the text.

Logprobs give a graded score from a single greedy token: the probability mass the judge puts
on the positive label, normalised over the two labels (so mass on other tokens does not
count as "no"), or the expected value over a 1-10 scale, or a distribution over listwise
choices. When the labels are not among the top logprobs (a remote judge without logprobs,
a model that answers with a preamble), the text is parsed instead; when that fails too, the
answer is unreadable and the caller makes it an error verdict.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from bestofk.verifiers.base import Completion

MIN_LABEL_MASS = 0.05
"""Less mass than this on the labels at the first token: read the text instead."""


@dataclass(frozen=True, slots=True)
class Reading:
    """A judge answer turned into a number, and how it was read."""

    value: float
    detail: str


def _norm(token: str) -> str:
    return token.strip().casefold()


def _first(completion: Completion) -> Mapping[str, float]:
    return completion.top_logprobs[0] if completion.top_logprobs else {}


def _mass(position: Mapping[str, float], label: str) -> float:
    """Probability on ``label`` in any case or spacing (`` yes``, ``Yes``, ``yes``)."""
    want = _norm(label)
    return sum(math.exp(lp) for token, lp in position.items() if _norm(token) == want)


def _integers(position: Mapping[str, float], low: int, high: int) -> dict[int, float]:
    """Probability on each integer token in [low, high] (a multi-token number counts by its
    first token, so "10" split as "1" "0" reads as 1: a known limit of one-token reading)."""
    mass: dict[int, float] = {}
    for token, lp in position.items():
        text = token.strip()
        if text.isdigit() and low <= int(text) <= high:
            mass[int(text)] = mass.get(int(text), 0.0) + math.exp(lp)
    return mass


def binary(completion: Completion, positive: str, negative: str) -> Reading | None:
    """P(positive) / (P(positive) + P(negative)), or 1/0 from the first label in the text."""
    position = _first(completion)
    yes, no = _mass(position, positive), _mass(position, negative)
    if yes + no >= MIN_LABEL_MASS:
        score = yes / (yes + no)
        return Reading(
            score,
            f"P({positive.strip()})={score:.3f} from logprobs "
            f"({positive.strip()} {yes:.3f}, {negative.strip()} {no:.3f})",
        )
    labels = f"{re.escape(_norm(positive))}|{re.escape(_norm(negative))}"
    match = re.search(rf"\b({labels})\b", completion.text, re.IGNORECASE)
    if match is None:
        return None
    said = match.group(1).casefold()
    return Reading(float(said == _norm(positive)), f"judge said {said!r} (text, no logprobs)")


def scale(completion: Completion, low: int = 1, high: int = 10) -> Reading | None:
    """Expected rating over [low, high] mapped to [0, 1], or the first rating in the text."""
    mass = _integers(_first(completion), low, high)
    total = sum(mass.values())
    if total >= MIN_LABEL_MASS:
        expected = sum(v * p for v, p in mass.items()) / total
        return Reading((expected - low) / (high - low), f"expected rating {expected:.2f}/{high}")
    for match in re.finditer(r"\d+", completion.text):
        rating = int(match.group(0))
        if low <= rating <= high:
            return Reading((rating - low) / (high - low), f"rated {rating}/{high} (text)")
    return None


def choice(completion: Completion, k: int) -> tuple[list[float], str] | None:
    """A distribution over shown answers 1..k, or a one-hot one from the number in the text."""
    mass = _integers(_first(completion), 1, k)
    total = sum(mass.values())
    if total >= MIN_LABEL_MASS:
        return [mass.get(i + 1, 0.0) / total for i in range(k)], "from logprobs"
    for match in re.finditer(r"\d+", completion.text):
        picked = int(match.group(0))
        if 1 <= picked <= k:
            return [float(i + 1 == picked) for i in range(k)], "from the text"
    return None
