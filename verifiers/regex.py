"""`regex`: does the candidate match a pattern? Runaway patterns are cut off, never hang."""

from __future__ import annotations

from typing import ClassVar, Literal

import regex
from pydantic import field_validator

from verifiers.base import (
    Candidate,
    RequestContext,
    Verdict,
    VerifierResources,
    VerifierSpec,
    run_blocking,
    timed,
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


def bounded_search(
    compiled: regex.Pattern[str], text: str, fullmatch: bool = False
) -> regex.Match[str] | None:
    """Match with a timeout; raises TimeoutError when the pattern runs away on this text."""
    if fullmatch:
        return compiled.fullmatch(text, timeout=MATCH_TIMEOUT_S)
    return compiled.search(text, timeout=MATCH_TIMEOUT_S)


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

    async def verify(self, ctx: RequestContext, candidate: Candidate) -> Verdict:
        """Match off the event loop, with a timeout."""
        return await timed("regex", lambda: self._check(candidate.text.strip()))

    async def _check(self, text: str) -> Verdict:
        fullmatch = self.spec.mode == "fullmatch"
        try:
            match = await run_blocking(bounded_search, self._compiled, text, fullmatch)
        except TimeoutError:
            return Verdict.failure(
                "regex", f"pattern timed out after {MATCH_TIMEOUT_S}s (runaway backtracking)"
            )
        if match is None:
            return Verdict("regex", 0.0, False, f"no {self.spec.mode} for {self.spec.pattern!r}")
        return Verdict("regex", 1.0, True, f"matched {match.group(0)[:80]!r}")
