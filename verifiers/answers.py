"""Final-answer extraction and normalisation, shared by the ``vote`` policy and verifier.

Both go through :func:`answer_key` under :func:`~bestofk.verifiers.base.run_bounded`: inline for a
short text whose answer is a number or plain text, in a worker process when the extract pattern runs
long or the answer needs sympy. A pattern that runs away (past :data:`MATCH_TIMEOUT_S` on one
text) is :data:`EXTRACT_TIMED_OUT`: an error verdict for that candidate from the verifier, a
400 naming ``selection.extract`` from the selection policy.
"""

from __future__ import annotations

from bestofk.verifiers.base import INLINE_MAX_CHARS, NotCheap
from bestofk.verifiers.numbers import as_number
from bestofk.verifiers.patterns import MATCH_TIMEOUT_S, MatchBudget, compile_pattern
from bestofk.verifiers.symbolic import canonical, looks_symbolic

_BOXED = compile_pattern(r"\\boxed\{((?:[^{}]|\{[^{}]*\})*)\}")
_LAST_NUMBER = compile_pattern(r"-?\d[\d,_]*(?:\.\d+)?(?:[eE][-+]?\d+)?")
EXTRACT_TIMED_OUT = (
    f"the extract pattern ran past its time budget (timed out after {MATCH_TIMEOUT_S}s: "
    "runaway backtracking)"
)


def extract_answer(text: str, pattern: str | None = None, budget: MatchBudget | None = None) -> str:
    """The final answer in ``text``.

    With ``pattern``: its first group (or whole match) at the last match. Otherwise, in order:
    the last ``\\boxed{…}``, the last number, the stripped text.
    """
    budget = budget or MatchBudget(inline=False)
    if pattern is not None:
        compiled = compile_pattern(pattern)
        matches = budget.findall(compiled, text)
        if matches:
            last = matches[-1]
            return str(last.group(1) if compiled.groups else last.group(0))
        return text.strip()
    boxed = budget.findall(_BOXED, text)
    if boxed:
        return str(boxed[-1].group(1))
    if budget.search(_LAST_NUMBER, text) is not None:
        return str(budget.findall(_LAST_NUMBER, text)[-1].group(0))
    return text.strip()


def normalise(answer: str, inline: bool = False) -> str:
    """A canonical key: numbers by value (``120`` = ``120.0``), expressions by sympy equality
    (``1/2`` = ``0.5``, ``2x+1`` = ``1+2*x``, ``\\frac{1}{2}`` = ``0.5``), other text by case
    and whitespace. ``inline``: NotCheap where sympy would be needed."""
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
    if inline and looks_symbolic(stripped):
        raise NotCheap
    symbolic = canonical(stripped)
    if symbolic is not None:
        return symbolic
    return " ".join(answer.split()).casefold().rstrip(".")


def answer_key(text: str, pattern: str | None = None, *, inline: bool = False) -> str:
    """Extract then normalise: candidates with equal keys give the same answer. Raises
    TimeoutError when ``pattern`` runs away (for :func:`~bestofk.verifiers.base.run_bounded`)."""
    if inline and len(text) > INLINE_MAX_CHARS:
        raise NotCheap
    return normalise(extract_answer(text, pattern, MatchBudget(inline)), inline)
