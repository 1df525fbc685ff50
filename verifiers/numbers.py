"""Plain numbers in text, as Decimals: shared by the ``exact`` verifier and answer extraction."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

MAX_NUMBER_CHARS = 100
"""Decimal parses arbitrarily long digit strings; nothing real needs more than this."""


def as_number(text: str) -> Decimal | None:
    """``text`` as a finite Decimal, or None when it is not a plain number."""
    cleaned = text.strip().replace(",", "").replace("_", "")
    if not cleaned or len(cleaned) > MAX_NUMBER_CHARS:
        return None
    try:
        value = Decimal(cleaned)
    except InvalidOperation:
        return None
    return value if value.is_finite() else None
