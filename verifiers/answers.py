"""Final answers: where they are in a text, and when two are the same, by math-verify's rules.

Shared by the ``vote`` policy (``selection.extract``), the ``vote`` verifier and the ``math``
verifier, so the three agree on what an answer is and when two answers are one:

- where: the last match of an extract pattern (its first group), else the last ``\\boxed{…}``,
  else the whole text when all of it is math, else what Hugging Face's math-verify extracts from
  the text (a ``$…$`` environment, the number after "the answer is", the last number), else the
  stripped text;
- when equal: two mathematical answers (LaTeX, numbers, fractions, percentages, sets,
  intervals, equations) are one answer when math-verify's ``verify`` says so, so ``\\frac12``,
  ``0.5`` and ``1/2`` are one; any other answer (a word, a date, a sentence) is compared as text,
  by case and whitespace.

math-verify's parser and comparison run sympy and its own timeouts by ``signal.alarm``, which
works only on a process's main thread: they run in the verifier workers (through
:func:`~bestofk.verifiers.base.run_bounded`), never on the event loop. A set of plain integers,
the common case, is settled inline without it. A pattern that runs away (past
:data:`MATCH_TIMEOUT_S` on one text) is :data:`EXTRACT_TIMED_OUT`: an error verdict for that
candidate from the verifier, a 400 naming ``selection.extract`` from the selection policy.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from bestofk.verifiers.base import INLINE_MAX_CHARS, NotCheap
from bestofk.verifiers.patterns import MATCH_TIMEOUT_S, MatchBudget, compile_pattern

_BOXED = compile_pattern(r"\\boxed\s*\{((?:[^{}]|\{(?:[^{}]|\{[^{}]*\})*\})*)\}")
_INTEGER = re.compile(r"-?\d+")
_DATE = re.compile(r"\d{1,4}[-/.]\d{1,2}[-/.]\d{1,4}")
"""A date is not arithmetic: math-verify reads ``2024-05-06`` as the number 2024."""
_LATEX_COMMAND = re.compile(
    r"\\(?:begin|end|text|mathrm|mathbf|textbf|operatorname|mbox)\{[^{}]*\}|\\(?:[A-Za-z]+|.)|\$"
)
_PLAIN_MATH = re.compile(r"(?:[\d\s.,+\-*/^()\[\]{}%=<>!|_]|(?<![A-Za-z])[A-Za-z](?![A-Za-z]))+")
"""What math looks like once its LaTeX commands are gone (``1/2``, ``50%``, ``2x+1``,
``\\frac{1}{2}``): digits, operators, brackets and one-letter names, no words."""
_MATH_SIGN = re.compile(r"[\d+\-*/^=<>]")
MAX_ANSWER_CHARS = 200
"""Longer answers are text: math-verify on a page of prose is slow and never right."""
PARSE_TIMEOUT_S = 2
VERIFY_TIMEOUT_S = 2
"""math-verify's own timeouts (whole seconds: ``signal.alarm``), within the worker's budget."""
EXTRACT_TIMED_OUT = (
    f"the extract pattern ran past its time budget (timed out after {MATCH_TIMEOUT_S}s: "
    "runaway backtracking)"
)


def boxed(text: str, budget: MatchBudget | None = None) -> str | None:
    """The content of the last ``\\boxed{…}`` in ``text`` (two levels of nested braces)."""
    matches = (budget or MatchBudget(inline=False)).findall(_BOXED, text)
    return str(matches[-1].group(1)) if matches else None


def extract_answer(
    text: str, pattern: str | None = None, budget: MatchBudget | None = None
) -> str | None:
    """The answer in ``text`` found without math-verify: ``pattern``'s first group (or whole
    match) at its last match, the stripped text when it does not match; without a pattern the
    last ``\\boxed{…}``, else None (math-verify extracts it, :func:`answer_keys`)."""
    budget = budget or MatchBudget(inline=False)
    if pattern is not None:
        compiled = compile_pattern(pattern)
        matches = budget.findall(compiled, text)
        if not matches:
            return text.strip()
        last = matches[-1]
        return str(last.group(1) if compiled.groups else last.group(0))
    return boxed(text, budget)


def is_math(answer: str) -> bool:
    """Whether math-verify should compare ``answer``: LaTeX or a plain number or expression
    without words; not a date, not a sentence, not a page."""
    answer = answer.strip()
    if not answer or len(answer) > MAX_ANSWER_CHARS or _DATE.search(answer):
        return False
    bare = _LATEX_COMMAND.sub(" ", answer)
    if _PLAIN_MATH.fullmatch(bare) is None:
        return False
    return bare != answer or _MATH_SIGN.search(bare) is not None


def _text_key(answer: str) -> str:
    return " ".join(answer.split()).casefold().rstrip(".")


def _math_verify() -> Any:
    # Imported on first use, in a worker: a second of imports (sympy, the LaTeX grammar).
    import math_verify

    return math_verify


@lru_cache(maxsize=1024)
def parse_math(answer: str) -> list[Any]:
    """math-verify's parse of one answer (LaTeX with or without ``$``, or plain); [] when it
    reads nothing. Cached: a reference is parsed once per worker."""
    mv = _math_verify()
    parsed: list[Any] = mv.parse(f"${answer}$", parsing_timeout=PARSE_TIMEOUT_S)
    return parsed or mv.parse(answer, parsing_timeout=PARSE_TIMEOUT_S)


def parse_text(text: str) -> tuple[str, list[Any]]:
    """What math-verify extracts from a whole text: (the answer as written, its parse); the
    stripped text and [] when it finds nothing."""
    parsed: list[Any] = _math_verify().parse(text, parsing_timeout=PARSE_TIMEOUT_S)
    if len(parsed) < 2:
        return text.strip(), []
    return str(parsed[-1]), parsed


def same_math(reference: list[Any], answer: list[Any]) -> bool:
    """math-verify's ``verify(gold, target)``: the order matters (the reference first)."""
    return bool(_math_verify().verify(reference, answer, timeout_seconds=VERIFY_TIMEOUT_S))


def find_answer(text: str, pattern: str | None = None) -> tuple[str, list[Any]]:
    """The answer in ``text`` and, when it is mathematical, math-verify's parse of it ([] if
    not): :func:`extract_answer`, else the whole text when all of it is math (``\\frac12``,
    ``10^{3}``), else what math-verify extracts. In a worker."""
    answer = extract_answer(text, pattern)
    if answer is None:
        whole = text.strip()
        if is_math(whole):
            return whole, parse_math(whole)
        answer, parsed = parse_text(text)
        return (answer, parsed) if is_math(answer) else (answer, [])
    return answer, parse_math(answer) if is_math(answer) else []


def answer_keys(
    texts: Sequence[str], pattern: str | None = None, *, inline: bool = False
) -> list[str]:
    """One key per text; texts with equal keys give the same answer. Raises TimeoutError when
    ``pattern`` runs away (for :func:`~bestofk.verifiers.base.run_bounded`); ``inline``:
    NotCheap unless every answer is a plain integer (math-verify would say what ``==`` says)."""
    if inline:
        return _integer_keys(texts, pattern)
    keys: list[str] = []
    clusters: list[tuple[str, list[Any]]] = []
    """Each math cluster's key and its first member's parse, in order of appearance."""
    seen: dict[str, str] = {}
    for text in texts:
        answer, parsed = find_answer(text, pattern)
        if not parsed:
            keys.append(_text_key(answer))
            continue
        written = answer.strip()
        if written not in seen:
            key = next((key for key, rep in clusters if same_math(rep, parsed)), None)
            if key is None:
                key = _text_key(answer)
                if any(key == other for other, _ in clusters):
                    key = f"{key}#{len(clusters)}"  # unequal, written alike (x and X)
                clusters.append((key, parsed))
            seen[written] = key
        keys.append(seen[written])
    return keys


def _integer_keys(texts: Sequence[str], pattern: str | None) -> list[str]:
    if sum(len(t) for t in texts) > INLINE_MAX_CHARS * max(1, len(texts)):
        raise NotCheap
    budget = MatchBudget(inline=True)
    keys = []
    for text in texts:
        if len(text) > INLINE_MAX_CHARS:
            raise NotCheap
        answer = extract_answer(text, pattern, budget)
        answer = (text if answer is None else answer).strip()
        if _INTEGER.fullmatch(answer) is None:
            raise NotCheap
        keys.append(str(int(answer)))
    return keys
