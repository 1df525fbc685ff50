"""Prompt templates that clients may supply: plain named fields only."""

from __future__ import annotations

import string


def fields(template: str) -> set[str]:
    """The field names ``template`` uses (``{{escaped}}`` braces are not fields)."""
    return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}


def check_template(template: str, allowed: set[str]) -> None:
    """Only plain named fields: ``{prompt.__class__}`` or ``{candidate:>9999999}`` could leak
    server objects into the prompt or blow up memory."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"invalid template: {exc}") from None
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if name not in allowed or spec or conversion:
            fields = ", ".join("{" + f + "}" for f in sorted(allowed))
            raise ValueError(f"template field {{{name}}} is not allowed; use {fields}")
