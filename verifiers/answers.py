"""Final-answer extraction and normalisation, shared by the ``vote`` policy and verifier."""

from __future__ import annotations

from verifiers.exact import as_number
from verifiers.regex import bounded_search, compile_pattern
from verifiers.symbolic import canonical

_BOXED = compile_pattern(r"\\boxed\{((?:[^{}]|\{[^{}]*\})*)\}")
_LAST_NUMBER = compile_pattern(r"-?\d[\d,_]*(?:\.\d+)?(?:[eE][-+]?\d+)?")


def extract_answer(text: str, pattern: str | None = None) -> str:
    """The final answer in ``text``.

    With ``pattern``: its first group (or whole match) at the last match. Otherwise, in order:
    the last ``\\boxed{…}``, the last number, the stripped text.
    """
    if pattern is not None:
        compiled = compile_pattern(pattern)
        matches = list(compiled.finditer(text, timeout=0.25))
        if matches:
            last = matches[-1]
            return str(last.group(1) if compiled.groups else last.group(0))
        return text.strip()
    boxed = list(_BOXED.finditer(text, timeout=0.25))
    if boxed:
        return str(boxed[-1].group(1))
    if bounded_search(_LAST_NUMBER, text) is not None:
        numbers = list(_LAST_NUMBER.finditer(text, timeout=0.25))
        return str(numbers[-1].group(0))
    return text.strip()


def normalise(answer: str) -> str:
    """A canonical key: numbers by value (``120`` = ``120.0``), expressions by sympy equality
    (``1/2`` = ``0.5``, ``2x+1`` = ``1+2*x``, ``\\frac{1}{2}`` = ``0.5``), other text by case
    and whitespace."""
    stripped = answer.strip().rstrip(".")
    number = as_number(stripped)
    if number is not None:
        if number.is_zero():
            return "0"  # -0 and 0.00 are 0
        return (
            format(number.normalize(), "f")
            if number == number.to_integral()
            else str(number.normalize())
        )
    symbolic = canonical(stripped)
    if symbolic is not None:
        return symbolic
    return " ".join(answer.split()).casefold().rstrip(".")


def answer_key(text: str, pattern: str | None = None) -> str:
    """Extract then normalise: candidates with equal keys give the same answer."""
    return normalise(extract_answer(text, pattern))
