"""Adaptive K and budgets: how many candidates a request samples, in waves, and when it stops.

An adaptive request samples a first wave of candidates and starts the next wave only while
nothing in hand settles it, up to its K:

- with verifiers (and a policy other than ``vote``): until a candidate passes every required
  verifier at ``early_exit.min_score`` (1.0 unless the request says), which also aborts the
  rest of its wave, as early exit does;
- with ``vote``, or with no verifier at all: until one answer holds a clear majority of the
  candidates so far (:func:`clear_majority`: at least ``min_votes`` of them and at least
  ``majority`` of all, a supermajority, as its_hub's self-consistency stops on).

A budget caps the search whether adaptive or not: completion tokens over all candidates and a
sampling deadline; past either the unfinished candidates are aborted and the best candidate so
far is chosen (once at least one has finished: a request always has one to answer with).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

StopReason = Literal["k", "early_exit", "majority", "budget_tokens", "budget_deadline"]
"""Why sampling ended: every candidate of K done, a candidate passed (early exit, or adaptive
K's pass rule), a clear majority (adaptive K's vote rule), or the budget's tokens or time."""


@dataclass(frozen=True, slots=True)
class AdaptiveConfig:
    """How adaptive K samples its waves (the request's ``adaptive`` object)."""

    first_wave: int = 3
    """Candidates in the first wave. Three measured best on the demo task set against K=8 with
    early exit (README, "Adaptive K"): 56 % of its tokens at 1.03x its p50 latency; waves of
    four spent 66 %, waves of two as few but up to 1.4x the latency (each wave waits for its
    slowest candidate, and a request of K=8 waits for four of them)."""
    growth: float = 1.0
    """Each next wave is the last one times this (rounded up): 1 keeps waves equal, 2 doubles
    them (4, 8, 16… as its_hub's self-consistency search does)."""
    majority: float = 2 / 3
    """The share of the candidates so far one answer must hold to stop a ``vote`` (or
    verifier-less) run."""
    min_votes: int = 3
    """…and the fewest candidates it must hold: two of two agreeing is not yet clear."""

    def waves(self, k: int) -> list[int]:
        """The wave sizes, at most ``k`` candidates in all."""
        sizes: list[int] = []
        size, left = max(1, self.first_wave), k
        while left > 0:
            sizes.append(min(size, left))
            left -= sizes[-1]
            size = max(size, math.ceil(size * self.growth))
        return sizes


@dataclass(frozen=True, slots=True)
class Budget:
    """Caps on one request's search (the request's ``budget`` object)."""

    max_tokens: int | None = None
    """Completion tokens over all candidates (aborted ones' too) before the search ends."""
    deadline_s: float | None = None
    """Seconds of sampling, from when the request starts, before the search ends."""


def clear_majority(answers: Iterable[str | None], config: AdaptiveConfig) -> bool:
    """Whether one answer holds a clear majority of ``answers`` (one per candidate so far,
    None for a candidate without an answer, which counts against every answer)."""
    answers = list(answers)
    counts = Counter(a for a in answers if a is not None)
    top = max(counts.values(), default=0)
    return top >= config.min_votes and top >= config.majority * len(answers)
