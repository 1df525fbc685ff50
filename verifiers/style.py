"""`style`: length, sentence count, emoji and forbidden-pattern constraints."""

from __future__ import annotations

from typing import ClassVar, Literal

import regex
from pydantic import Field, field_validator

from bestofk.verifiers.base import (
    Candidate,
    RequestContext,
    Verdict,
    VerifierResources,
    VerifierSpec,
    run_bounded,
)
from bestofk.verifiers.patterns import MatchBudget, compile_pattern

# A sentence ends at . ! ? (or their runs) followed by whitespace or the end of the text.
_SENTENCE_END = regex.compile(r"[.!?…]+(?=\s|$)")
_EMOJI = regex.compile(r"[\p{Extended_Pictographic}\p{Regional_Indicator}]")
MAX_FORBID = 32


def count_sentences(text: str, budget: MatchBudget | None = None) -> int:
    """Sentences in ``text``; trailing words without a full stop count as one more."""
    stripped = text.strip()
    if not stripped:
        return 0
    ends = (budget or MatchBudget(inline=False)).findall(_SENTENCE_END, stripped)
    tail = stripped[ends[-1].end() :].strip() if ends else stripped
    return len(ends) + (1 if tail else 0)


class StyleSpec(VerifierSpec):
    """Constraints, each optional; the score is the share of the set ones that hold."""

    type: Literal["style"] = "style"
    max_sentences: int | None = Field(default=None, ge=1)
    max_chars: int | None = Field(default=None, ge=1)
    no_emoji: bool = False
    forbid: list[str] = Field(default_factory=list, max_length=MAX_FORBID)

    @field_validator("forbid")
    @classmethod
    def _compiles(cls, value: list[str]) -> list[str]:
        for pattern in value:
            compile_pattern(pattern)
        return value


def check_style(spec: StyleSpec, text: str, *, inline: bool = False) -> Verdict:
    """The style verdict for ``text`` (for :func:`~bestofk.verifiers.base.run_bounded`): inline,
    every regex of the check shares one budget; a runaway forbid pattern is an error verdict."""
    budget = MatchBudget(inline)
    failures: list[str] = []
    total = 0
    if spec.max_sentences is not None:
        total += 1
        if (n := count_sentences(text, budget)) > spec.max_sentences:
            failures.append(f"{n} sentences > {spec.max_sentences}")
    if spec.max_chars is not None:
        total += 1
        if len(text.strip()) > spec.max_chars:
            failures.append(f"{len(text.strip())} chars > {spec.max_chars}")
    if spec.no_emoji:
        total += 1
        if budget.search(_EMOJI, text):
            failures.append("contains emoji")
    for pattern in spec.forbid:
        total += 1
        try:
            hit = budget.search(compile_pattern(pattern), text)
        except TimeoutError:
            return Verdict.failure("style", f"forbid pattern {pattern!r} timed out")
        if hit is not None:
            failures.append(f"forbidden {pattern!r} found")
    if total == 0:
        return Verdict("style", 1.0, True, "no constraints set")
    score = (total - len(failures)) / total
    return Verdict("style", score, not failures, "; ".join(failures) or "all constraints hold")


class StyleVerifier:
    """Checks each set constraint; passes only when all hold."""

    Spec: ClassVar[type[VerifierSpec]] = StyleSpec

    def __init__(self, spec: VerifierSpec, resources: VerifierResources) -> None:
        assert isinstance(spec, StyleSpec)
        self.spec = spec
        self._workers = resources.workers

    async def verify(self, ctx: RequestContext, candidate: Candidate) -> Verdict:
        """Inline when quick, else in a worker process."""
        return await run_bounded(self._workers, check_style, self.spec, candidate.text)
