"""How much best-of-K buys, per profile and per verifier: would training on the verdicts pay?

For each request, pass@1 asks whether the first sample (index 0, an unbiased single draw)
passed; pass@K whether any candidate did. Their difference, the lift, is what the reranker
digs out per request, and exactly what selection (RSFT) and pairwise (DPO/KTO) training on
these records would teach the model to produce first. A wide lift says training should pay; a
pass@K near zero says there is nothing to learn from; a pass@1 near one, nothing left to gain.

Rows are per profile (``-`` for requests that named none) and per verifier: ``all`` means
every verifier passed (the candidate's ``passed``), a verifier's own name means that verifier
alone (``name#2`` for the second of the same type in a request). Records without verifiers
carry no labels, and records cut short by the deadline miss verdicts; both are counted, not
used.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from bestofk.service.records.format import CandidateRecord, Record

ALL = "all"
NO_PROFILE = "-"
Source = Literal["generate", "verify"]


@dataclass(slots=True)
class _Tally:
    requests: int = 0
    first_passed: int = 0
    any_passed: int = 0
    candidates: int = 0
    passing: int = 0
    k: int = 0
    early_exits: int = 0


@dataclass(frozen=True, slots=True)
class Row:
    """One (profile, verifier) line of the report."""

    profile: str
    verifier: str
    requests: int
    pass_at_1: float
    """Share of requests whose first sample passed."""
    pass_at_k: float
    """Share of requests with any passing candidate."""
    lift: float
    """pass@K - pass@1."""
    pass_rate: float
    """Share of all candidates that passed."""
    mean_k: float
    early_exit_rate: float
    advice: str


@dataclass(slots=True)
class Report:
    """Every row, and how many records were read and left out."""

    rows: list[Row]
    records: int = 0
    skipped: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` form."""
        return {
            "records": self.records,
            "skipped": self.skipped,
            "rows": [asdict(r) for r in self.rows],
        }


def advice(pass_at_1: float, pass_at_k: float) -> str:
    """A one-line reading of pass@1 against pass@K."""
    lift = pass_at_k - pass_at_1
    if pass_at_k == 0:
        return "would not pay: nothing ever passes, so there is nothing to learn from"
    if pass_at_1 >= 0.95:
        return "would gain little: the first sample already passes"
    if lift >= 0.1:
        return (
            f"should pay: K samples find passing answers the first misses "
            f"({lift:+.2f} from pass@1 to pass@K)"
        )
    return f"would gain little: pass@K adds only {lift:+.2f} over pass@1"


def _labels(c: CandidateRecord) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for v in c.verdicts:
        seen[v.verifier] = seen.get(v.verifier, 0) + 1
        out.append(v.verifier if seen[v.verifier] == 1 else f"{v.verifier}#{seen[v.verifier]}")
    return out


def compute(records: Iterable[Record], source: Source | None = None) -> Report:
    """Tally ``records`` (optionally only those from ``generate`` or ``verify``)."""
    tallies: dict[tuple[str, str], _Tally] = {}
    read = 0
    skipped = {"no_verifiers": 0, "partial": 0, "other_source": 0}
    for record in records:
        read += 1
        if source is not None and record.source != source:
            skipped["other_source"] += 1
            continue
        if not record.has_verdicts:
            skipped["no_verifiers"] += 1
            continue
        if record.stats.partial:
            skipped["partial"] += 1
            continue
        profile = record.profile or NO_PROFILE
        # Per label: did each candidate pass it? "all" is the candidate's combined verdict.
        outcomes: dict[str, dict[int, bool]] = {ALL: {}}
        for c in record.candidates:
            outcomes[ALL][c.index] = c.passed
            for label, v in zip(_labels(c), c.verdicts, strict=True):
                outcomes.setdefault(label, {})[c.index] = v.passed
        for label, passed in outcomes.items():
            t = tallies.setdefault((profile, label), _Tally())
            t.requests += 1
            t.first_passed += passed.get(0, False)
            t.any_passed += any(passed.values())
            t.candidates += len(passed)
            t.passing += sum(passed.values())
            t.k += record.stats.k
            t.early_exits += record.stats.early_exit
    rows = []
    # "all" first within a profile, then the verifiers by name.
    for (profile, label), t in sorted(
        tallies.items(), key=lambda kv: (kv[0][0], kv[0][1] != ALL, kv[0][1])
    ):
        p1 = t.first_passed / t.requests
        pk = t.any_passed / t.requests
        rows.append(
            Row(
                profile=profile,
                verifier=label,
                requests=t.requests,
                pass_at_1=p1,
                pass_at_k=pk,
                lift=pk - p1,
                pass_rate=t.passing / t.candidates if t.candidates else 0.0,
                mean_k=t.k / t.requests,
                early_exit_rate=t.early_exits / t.requests,
                advice=advice(p1, pk),
            )
        )
    return Report(rows=rows, records=read, skipped={k: v for k, v in skipped.items() if v})


def render(report: Report) -> RenderableType:
    """The report as a table, then one line of advice per profile."""
    out = Table(title=f"{report.records} records: pass@1 vs pass@K", box=box.SIMPLE_HEAD)
    for name in ("profile", "verifier"):
        # Names stay whole; the number columns give way on a narrow terminal.
        width = max([len(name), *(len(getattr(r, name)) for r in report.rows)])
        out.add_column(name, no_wrap=True, min_width=width)
    for name in ("n", "pass@1", "pass@K", "lift", "pass rate", "mean K", "early exit"):
        out.add_column(name, justify="right")
    for r in report.rows:
        out.add_row(
            r.profile,
            r.verifier,
            str(r.requests),
            f"{r.pass_at_1:.3f}",
            f"{r.pass_at_k:.3f}",
            f"{r.lift:+.3f}",
            f"{r.pass_rate:.3f}",
            f"{r.mean_k:.1f}",
            f"{r.early_exit_rate:.3f}",
            style="bold" if r.verifier == ALL else None,
        )
    if report.skipped:
        out.caption = "left out: " + ", ".join(f"{k} {v}" for k, v in report.skipped.items())
    advice_lines = Text()
    for r in report.rows:
        if r.verifier == ALL:
            advice_lines.append(f"{r.profile}: ", style="bold")
            advice_lines.append(f"training on these verdicts {r.advice}\n")
    return Group(out, advice_lines)
