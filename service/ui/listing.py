"""Records → what the request list (``/ui``) and the stats page (``/ui/stats``) show: the
list's filters and its rows, and the chart's bars. Plain data for the templates, no HTML here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from bestofk.service.records.format import CandidateRecord, Record

Outcome = Literal["passed", "failed"]
NO_PROFILE = "-"


@dataclass(frozen=True, slots=True)
class Filters:
    """What the request list shows: all of it, or one profile, model or outcome."""

    profile: str | None = None
    """A profile's name, or ``-`` for requests that named none."""
    model: str | None = None
    outcome: Outcome | None = None
    """``passed``: the chosen candidate passed every verifier; ``failed``: it did not."""

    def match(self, record: Record) -> bool:
        """Whether ``record`` passes every filter set."""
        if self.profile is not None and (record.profile or NO_PROFILE) != self.profile:
            return False
        if self.model is not None and record.model != self.model:
            return False
        return self.outcome is None or _winner(record).passed == (self.outcome == "passed")

    def query(self) -> dict[str, str]:
        """The filters as query parameters (for links that keep them)."""
        fields = {"profile": self.profile, "model": self.model, "outcome": self.outcome}
        return {k: v for k, v in fields.items() if v is not None}


@dataclass(frozen=True, slots=True)
class Summary:
    """One row of the request list."""

    id: str
    timestamp: str
    model: str
    profile: str
    source: str
    k: int
    generated: int
    passing: int
    winner_index: int
    winner_score: float
    winner_passed: bool
    total_ms: float | None
    policy: str
    early_exit: bool
    partial: bool


def _winner(record: Record) -> CandidateRecord:
    chosen = record.selection.chosen
    return next(c for c in record.candidates if c.index == chosen)


def summary(record: Record) -> Summary:
    """The list row of ``record``."""
    winner = _winner(record)
    return Summary(
        id=record.id,
        timestamp=record.timestamp,
        model=record.model,
        profile=record.profile or NO_PROFILE,
        source=record.source,
        k=record.stats.k,
        generated=record.stats.generated,
        passing=record.stats.passing,
        winner_index=winner.index,
        winner_score=winner.score,
        winner_passed=winner.passed,
        total_ms=record.timing.total_ms if record.timing is not None else None,
        policy=record.selection.policy,
        early_exit=record.stats.early_exit,
        partial=record.stats.partial,
    )


@dataclass(frozen=True, slots=True)
class Bar:
    """The stats chart: one profile's pass@1 and pass@K."""

    profile: str
    pass_at_1: float
    pass_at_k: float
    requests: int


def chart(rows: Sequence[Any]) -> list[Bar]:
    """One bar pair per profile, from the stats report's ``all`` rows."""
    return [
        Bar(r.profile, r.pass_at_1, r.pass_at_k, r.requests) for r in rows if r.verifier == "all"
    ]
