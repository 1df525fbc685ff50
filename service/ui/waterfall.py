"""A record's timing → the request page's waterfall: a lane for the queue, the generation, the
verification and each candidate, in ms since the request arrived. Plain data for the templates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from bestofk.service.records.format import Record


@dataclass(frozen=True, slots=True)
class Segment:
    """A bar in the timing waterfall, in ms since the request arrived."""

    kind: Literal["queue", "generate", "verify"]
    start_ms: float
    end_ms: float
    title: str


@dataclass(frozen=True, slots=True)
class Lane:
    """A row of the waterfall."""

    label: str
    segments: list[Segment]


@dataclass(frozen=True, slots=True)
class Waterfall:
    """The request's timeline: its lanes, the scale, and the early exit if there was one."""

    lanes: list[Lane]
    total_ms: float
    early_exit_ms: float | None

    def pct(self, ms: float) -> float:
        """A time as a share of the scale, in percent (for CSS)."""
        return max(0.0, min(100.0, 100.0 * ms / self.total_ms)) if self.total_ms > 0 else 0.0


def waterfall(record: Record) -> Waterfall | None:
    """The timeline: queue, generation, each candidate's generation and verification."""
    t = record.timing
    if t is None or not t.total_ms:
        return None
    queue = t.queue_ms
    lanes = [Lane("queue", [Segment("queue", 0.0, queue, f"queue {queue:.1f} ms")])]
    generate = t.generate_ms
    if record.source == "generate":
        end = queue + generate
        lanes.append(
            Lane("generation", [Segment("generate", queue, end, f"generation {generate:.1f} ms")])
        )
    ready = [c.ready_ms for c in record.candidates if c.ready_ms is not None]
    verify = t.verify_ms
    if ready:
        start = min(ready)
        title = f"verification, set-level verifiers included: {verify:.1f} ms"
        lanes.append(Lane("verification", [Segment("verify", start, start + verify, title)]))
    for c in sorted(record.candidates, key=lambda c: c.index):
        if c.ready_ms is None or c.verified_ms is None:
            continue
        segments = []
        if record.source == "generate":
            took = c.ready_ms - queue
            segments.append(
                Segment("generate", queue, c.ready_ms, f"#{c.index} generated in {took:.1f} ms")
            )
        took = c.verified_ms - c.ready_ms
        segments.append(
            Segment("verify", c.ready_ms, c.verified_ms, f"#{c.index} verified in {took:.1f} ms")
        )
        lanes.append(Lane(f"#{c.index}", segments))
    early = queue + generate if record.stats.early_exit else None
    return Waterfall(lanes, t.total_ms, early)
