"""Two candidates of a request page, word by word: what ``?a=…&b=…`` shows under the cards."""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from bestofk.service.ui.trace import Trace

DIFF_MAX_TOKENS = 4000
"""Words per text past which two candidates are not diffed (difflib is quadratic at worst)."""


@dataclass(frozen=True, slots=True)
class Diff:
    """Two candidates' texts word by word: ``equal``, ``delete`` (only in a), ``insert``."""

    a: int
    b: int
    parts: list[tuple[str, str]]
    too_long: bool = False


def diff(trace: Trace, a: int, b: int) -> Diff | None:
    """The word diff of candidates ``a`` and ``b`` of ``trace`` (None if either is unknown)."""
    texts = {c.index: c.text for c in trace.candidates}
    if a not in texts or b not in texts:
        return None
    left, right = _words(texts[a]), _words(texts[b])
    if max(len(left), len(right)) > DIFF_MAX_TOKENS:
        return Diff(a, b, [], too_long=True)
    parts: list[tuple[str, str]] = []
    matcher = difflib.SequenceMatcher(None, left, right, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag in ("equal", "delete", "replace"):
            parts.append(("equal" if tag == "equal" else "delete", "".join(left[i1:i2])))
        if tag in ("insert", "replace"):
            parts.append(("insert", "".join(right[j1:j2])))
    return Diff(a, b, parts)


def _words(text: str) -> list[str]:
    return [w for w in re.split(r"(\s+)", text) if w]
