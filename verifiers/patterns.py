"""Client-supplied regular expressions: compiled with a size bound, matched within a time budget.

Shared by the ``regex`` and ``style`` verifiers, the ``vote`` extract pattern and answer
extraction (which the selection policy uses too).
"""

from __future__ import annotations

import functools
import time

import regex

from bestofk.verifiers.base import INLINE_BUDGET_S, NotCheap

MAX_PATTERN_CHARS = 2000
MATCH_TIMEOUT_S = 0.25
"""Catastrophic backtracking is stopped by the `regex` module's own timeout."""


@functools.lru_cache(maxsize=256)
def compile_pattern(pattern: str) -> regex.Pattern[str]:
    """Compile a client-supplied pattern, or raise ValueError with a message worth showing.

    Cached: a client sends the same pattern with every request (a spec is validated, then
    built), and a lookup here is a fraction of the `regex` module's own cache's."""
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
