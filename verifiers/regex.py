"""`regex`: does the candidate match a pattern? Runaway patterns are cut off, never hang."""

from __future__ import annotations

import time
from typing import ClassVar, Literal

import regex
from pydantic import field_validator

from bestofk.verifiers.base import (
    INLINE_BUDGET_S,
    Candidate,
    NotCheap,
    RequestContext,
    Verdict,
    VerifierResources,
    VerifierSpec,
    run_bounded,
)

MAX_PATTERN_CHARS = 2000
MATCH_TIMEOUT_S = 0.25
"""Catastrophic backtracking is stopped by the `regex` module's own timeout."""


def compile_pattern(pattern: str) -> regex.Pattern[str]:
    """Compile a client-supplied pattern, or raise ValueError with a message worth showing."""
    if len(pattern) > MAX_PATTERN_CHARS:
        raise ValueError(f"pattern is longer than {MAX_PATTERN_CHARS} characters")
    try:
        return regex.compile(pattern, regex.VERSION0)
    except regex.error as exc:
        raise ValueError(f"invalid regular expression: {exc}") from None


class MatchBudget:
    """How long regex work may run. In a worker: :data:`MATCH_TIMEOUT_S` per match, past which
    TimeoutError (a runaway pattern). Inline on the loop: :data:`INLINE_BUDGET_S` for all the
    matches of one check together, past which :class:`NotCheap` (retry it in a worker)."""

    def __init__(self, inline: bool) -> None:
        self.inline = inline
        self._until = time.perf_counter() + INLINE_BUDGET_S

    def timeout(self) -> float:
        """The timeout for the next match."""
        if not self.inline:
            return MATCH_TIMEOUT_S
        left = self._until - time.perf_counter()
        if left <= 0:
            raise NotCheap
        return left

    def search(
        self, compiled: regex.Pattern[str], text: str, fullmatch: bool = False
    ) -> regex.Match[str] | None:
        """``search`` (or ``fullmatch``) within the budget."""
        try:
            if fullmatch:
                return compiled.fullmatch(text, timeout=self.timeout())
            return compiled.search(text, timeout=self.timeout())
        except TimeoutError:
            if self.inline:
                raise NotCheap from None
            raise

    def findall(self, compiled: regex.Pattern[str], text: str) -> list[regex.Match[str]]:
        """Every match, within the budget."""
        try:
            return list(compiled.finditer(text, timeout=self.timeout()))
        except TimeoutError:
            if self.inline:
                raise NotCheap from None
            raise


def check_match(
    compiled: regex.Pattern[str], mode: str, text: str, *, inline: bool = False
) -> Verdict:
    """The regex verdict for ``text`` (for :func:`~bestofk.verifiers.base.run_bounded`)."""
    budget = MatchBudget(inline)
    try:
        match = budget.search(compiled, text, fullmatch=mode == "fullmatch")
    except TimeoutError:
        return Verdict.failure(
            "regex", f"pattern timed out after {MATCH_TIMEOUT_S}s (runaway backtracking)"
        )
    if match is None:
        return Verdict("regex", 0.0, False, f"no {mode} for {compiled.pattern!r}")
    return Verdict("regex", 1.0, True, f"matched {match.group(0)[:80]!r}")


class RegexSpec(VerifierSpec):
    """``pattern`` to look for; ``mode`` ``search`` (anywhere) or ``fullmatch`` (whole text)."""

    type: Literal["regex"] = "regex"
    pattern: str
    mode: Literal["search", "fullmatch"] = "search"

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        compile_pattern(value)
        return value


class RegexVerifier:
    """Score 1 when the (stripped) candidate matches the pattern, else 0."""

    Spec: ClassVar[type[VerifierSpec]] = RegexSpec

    def __init__(self, spec: VerifierSpec, resources: VerifierResources) -> None:
        assert isinstance(spec, RegexSpec)
        self.spec = spec
        self._compiled = compile_pattern(spec.pattern)
        self._workers = resources.workers

    async def verify(self, ctx: RequestContext, candidate: Candidate) -> Verdict:
        """Match inline when quick, else in a worker; a runaway pattern is an error verdict."""
        text = candidate.text.strip()
        return await run_bounded(self._workers, check_match, self._compiled, self.spec.mode, text)
