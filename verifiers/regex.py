"""`regex`: does the candidate match a pattern? Runaway patterns are cut off, never hang."""

from __future__ import annotations

from typing import ClassVar, Literal

import regex
from pydantic import field_validator

from bestofk.verifiers.base import (
    Candidate,
    RequestContext,
    Verdict,
    VerifierResources,
    VerifierSpec,
    run_bounded,
)
from bestofk.verifiers.patterns import MATCH_TIMEOUT_S, MatchBudget, compile_pattern


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
