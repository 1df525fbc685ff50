"""A record → what its request page (``/ui/requests/{id}``) shows: the prompt, the candidate
cards best first, and why the winner won. Plain data for the templates, no HTML here; the
page's timeline is :mod:`.waterfall`'s, its summary row :mod:`.listing`'s, the word diff of two
candidates :mod:`.diff`'s.

The ranking, the sampling chances and the vote clusters come from :mod:`service.selection`
itself (a record's candidates are turned back into :class:`Scored`), so a page explains a
choice with the code that made it. Every text a page shows passes through ``record_redact``'s
patterns again: a prompt the model echoed, or a verdict quoting it, stays hidden too.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from bestofk.service.records.format import CandidateRecord, Record, VerdictRecord, redact
from bestofk.service.selection import (
    Scored,
    SelectionConfig,
    choice_probabilities,
    ranked,
    vote_clusters,
)
from bestofk.service.ui.listing import Summary, summary
from bestofk.service.ui.waterfall import Waterfall, waterfall
from bestofk.verifiers.base import Candidate


@dataclass(frozen=True, slots=True)
class Turn:
    """One chat message (or the text prompt, as a ``prompt`` turn)."""

    role: str
    content: str


@dataclass(frozen=True, slots=True)
class CandidateView:
    """One candidate card."""

    index: int
    rank: int
    """1 for the best under the ranking (required verifiers, score, then the tie-break)."""
    winner: bool
    text: str
    reasoning: str | None
    score: float
    passed: bool
    required_ok: bool
    finish_reason: str | None
    tokens: int
    mean_logprob: float | None
    verdicts: list[VerdictRecord]
    answer: str | None
    chance: float | None
    """Under ``sample``: the chance this candidate was drawn."""
    ready_ms: float | None
    verified_ms: float | None


@dataclass(frozen=True, slots=True)
class ClusterView:
    """A ``vote`` cluster: the answer, its members' indices, their summed score."""

    answer: str
    members: list[int]
    weight: float
    chosen: bool


@dataclass(slots=True)
class Trace:
    """Everything the request page shows."""

    record: Record
    summary: Summary
    turns: list[Turn]
    candidates: list[CandidateView]
    """Best first."""
    why: list[str]
    """Why the winner won, in sentences."""
    clusters: list[ClusterView] = field(default_factory=list)
    waterfall: Waterfall | None = None


def trace(record: Record, patterns: Sequence[re.Pattern[str]] = ()) -> Trace:
    """The request page of ``record``; ``patterns``: ``record_redact``'s, compiled."""
    scored = [_scored(c) for c in record.candidates]
    by_logprob = record.selection.tie_break != "index"
    order = ranked(scored, by_logprob)
    chances: dict[int, float] = {}
    if record.selection.policy == "sample":
        config = _config(record)
        chances = {s.candidate.index: p for s, p in choice_probabilities(scored, config)}
    by_index = {c.index: c for c in record.candidates}
    cards = [
        _card(by_index[s.candidate.index], rank, record, chances, patterns)
        for rank, s in enumerate(order, start=1)
    ]
    why, clusters = _explain(record, order, chances)
    return Trace(
        record=record,
        summary=summary(record),
        turns=_turns(record, patterns),
        candidates=cards,
        why=why,
        clusters=clusters,
        waterfall=waterfall(record),
    )


def _scored(c: CandidateRecord) -> Scored:
    candidate = Candidate(c.index, c.text, c.finish_reason, c.tokens, c.mean_logprob)
    # The ranking reads the combined score; the cards show the record's verdicts.
    return Scored(candidate, [], c.score, c.passed, c.required_ok)


_DEFAULT_SELECTION = SelectionConfig()


def _config(record: Record) -> SelectionConfig:
    sel = record.selection
    return SelectionConfig(
        policy=sel.policy,  # type: ignore[arg-type]  # a record holds one the server knew
        beta=sel.beta if sel.beta is not None else _DEFAULT_SELECTION.beta,
        seed=sel.seed,
        extract=sel.extract,
        tie_break="index" if sel.tie_break == "index" else "logprob",
    )


def _card(
    c: CandidateRecord,
    rank: int,
    record: Record,
    chances: dict[int, float],
    patterns: Sequence[re.Pattern[str]],
) -> CandidateView:
    verdicts = [
        v.model_copy(
            update={
                "detail": redact(v.detail, patterns),
                "error": redact(v.error, patterns) if v.error else v.error,
            }
        )
        for v in c.verdicts
    ]
    return CandidateView(
        index=c.index,
        rank=rank,
        winner=c.index == record.selection.chosen,
        text=redact(c.text, patterns),
        reasoning=redact(c.reasoning, patterns) if c.reasoning else None,
        score=c.score,
        passed=c.passed,
        required_ok=c.required_ok,
        finish_reason=c.finish_reason,
        tokens=c.tokens,
        mean_logprob=c.mean_logprob,
        verdicts=verdicts,
        answer=redact(c.answer, patterns) if c.answer is not None else None,
        chance=chances.get(c.index),
        ready_ms=c.ready_ms,
        verified_ms=c.verified_ms,
    )


def _turns(record: Record, patterns: Sequence[re.Pattern[str]]) -> list[Turn]:
    if record.messages is None:
        return [Turn("prompt", redact(record.prompt or "", patterns))]
    turns = []
    for message in record.messages:
        content = message.get("content")
        if isinstance(content, list):  # OpenAI content parts: the text ones, the rest named
            content = "\n".join(
                p["text"] if p.get("type") == "text" else f"[{p.get('type')}]"
                for p in content
                if isinstance(p, dict)
            )
        turns.append(Turn(str(message.get("role", "?")), redact(str(content or ""), patterns)))
    return turns


def _explain(
    record: Record, order: list[Scored], chances: dict[int, float]
) -> tuple[list[str], list[ClusterView]]:
    sel = record.selection
    winner = next(s for s in order if s.candidate.index == sel.chosen)
    n_failing = sum(not s.required_ok for s in order)
    why: list[str] = []
    if n_failing:
        why.append(
            f"{n_failing} of {len(order)} candidates failed a required verifier and rank below "
            "every candidate that passed them."
        )
    clusters: list[ClusterView] = []
    if sel.policy == "sample":
        why.append(
            f"sample: drawn with probability ∝ exp(β·score), β = {_config(record).beta:g}"
            + (f", seed {sel.seed}" if sel.seed is not None else "")
            + f"; #{sel.chosen} had a {chances.get(sel.chosen, 0.0):.1%} chance."
        )
    elif sel.policy == "vote":
        pool = [s for s in order if s.required_ok] or order
        answers = {c.index: c.answer for c in record.candidates if c.answer is not None}
        found = vote_clusters(pool, answers, sel.tie_break != "index")
        clusters = [
            ClusterView(
                str(c.answer) if isinstance(c.answer, str) else f"(no answer: #{c.answer})",
                [m.candidate.index for m in c.members],
                c.weight,
                sel.chosen in {m.candidate.index for m in c.members},
            )
            for c in found
        ]
        if clusters:
            top = clusters[0]
            why.append(
                f"vote: the heaviest cluster (answer {top.answer!r}, {len(top.members)} of "
                f"{len(pool)} candidates, summed score {top.weight:.3f}) wins, and its best "
                f"member, #{sel.chosen}, is returned."
            )
        if len(clusters) > 1 and clusters[1].weight == clusters[0].weight:
            runner = clusters[1]
            how = (
                "the larger cluster"
                if len(runner.members) != len(clusters[0].members)
                else "the cluster whose best member ranks higher"
            )
            why.append(f"Tied in weight with answer {runner.answer!r}; {how} won.")
    else:
        any_required = any(spec.get("required") for spec in record.verifiers)
        why.append(
            f"argmax: #{sel.chosen} has the highest combined score ({winner.score:.3f})"
            + (
                " and passes every required verifier."
                if any_required and winner.required_ok
                else "."
            )
        )
    why.extend(_ties(record, order, winner))
    return why, clusters


def _ties(record: Record, order: list[Scored], winner: Scored) -> list[str]:
    if record.selection.policy != "argmax":
        return []
    tied = [
        s
        for s in order
        if s is not winner and (s.required_ok, s.score) == (winner.required_ok, winner.score)
    ]
    if not tied:
        rest = [s for s in order if s is not winner]
        if rest:
            return [f"The runner-up, #{rest[0].candidate.index}, scored {rest[0].score:.3f}."]
        return []
    others = ", ".join(f"#{s.candidate.index}" for s in tied)
    logprobs = [s.candidate.mean_logprob for s in (winner, *tied)]
    by_logprob = record.selection.tie_break != "index"
    if by_logprob and logprobs[0] is not None and len(set(logprobs)) > 1:
        best_other = max((lp for lp in logprobs[1:] if lp is not None), default=None)
        versus = f" against {best_other:.3f}" if best_other is not None else ""
        how = f"the higher mean token logprob ({logprobs[0]:.3f}{versus})"
    else:
        how = "the lower index" + ("" if by_logprob else " (tie_break: index)")
    return [f"Tied at {winner.score:.3f} with {others}; {how} broke the tie."]
