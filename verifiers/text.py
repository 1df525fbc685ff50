"""Text helpers shared by verifiers."""

from __future__ import annotations

import re

_FENCE = re.compile(r"```[^\n`]*\n(.*?)(?:```|\Z)", re.DOTALL)


def fenced_block(text: str) -> str | None:
    """The body of the first fenced code block in ``text``, or None when there is none."""
    match = _FENCE.search(text)
    return match.group(1) if match else None
