"""The demo model's task families: prompts, designed answer distributions and the task set.

Every training prompt has a designed distribution over completions in which the right answer
holds about 40% of the mass and the rest is spread over several distinct, plausible wrong
answers (near misses, wordy answers, buggy code, style violations). A model fitted to these
distributions buries the right answer the way a base model does: at temperature 1 a single
sample is right about 40% of the time, while 8 samples contain it with probability
1 - 0.6**8 ≈ 0.98. That gap (pass@1 ≪ pass@8) is what best-of-K reranking recovers.

``python demo/corpus.py`` rewrites ``demo/tasks.jsonl`` from the definitions here, so the
task prompts are always among the training prompts (``train.py`` also writes it).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

TASKS_PATH = Path(__file__).with_name("tasks.jsonl")

JUDGE_TEMPLATE = "Question: {prompt}\nAnswer: {candidate}\nIs the answer correct? (yes/no):"
"""The judge verifier's default pointwise template; the positive label is " yes"."""

JUDGE_YES = " yes"
JUDGE_NO = " no"
JUDGE_LABEL_ACCURACY = 0.9
"""The judge is trained on labels that are right only this often, so it stays a noisy judge."""

CORRECT_SHARE = 0.4
"""Probability mass of the right answer in every designed distribution."""


@dataclass(frozen=True)
class Example:
    """One training prompt, the distribution its completions are drawn from, and its draw weight.

    ``answers`` pairs each distinct completion with its probability (they sum to 1);
    ``correct`` is the set of completions that pass the task's verifiers; ``weight`` is the
    example's share when drawing examples of its group.
    """

    family: str
    prompt: str
    answers: tuple[tuple[str, float], ...]
    correct: frozenset[str]
    weight: float = 1.0
    hard_negatives: tuple[tuple[str, float], ...] = ()
    """Well-formed wrong answers the judge must also reject (another n's factorial, another
    Monday), with draw weights: the nearest ones, which it confuses most, weigh most."""


def mixture(
    correct: Sequence[tuple[str, float]], wrong: Sequence[tuple[str, float]]
) -> tuple[tuple[tuple[str, float], ...], frozenset[str]]:
    """Normalise right and wrong variants to ``CORRECT_SHARE`` and ``1 - CORRECT_SHARE``.

    Wrong variants that coincide with a right one (e.g. (n-1)! = n! for n = 1) are dropped and
    duplicates merged, so the right answer's mass is exactly what was designed.
    """
    right: dict[str, float] = {}
    for text, w in correct:
        right[text] = right.get(text, 0.0) + w
    wrongs: dict[str, float] = {}
    for text, w in wrong:
        if text not in right:
            wrongs[text] = wrongs.get(text, 0.0) + w
    r_total = sum(right.values())
    w_total = sum(wrongs.values())
    answers = [(t, CORRECT_SHARE * w / r_total) for t, w in right.items()]
    answers += [(t, (1 - CORRECT_SHARE) * w / w_total) for t, w in wrongs.items()]
    return tuple(answers), frozenset(right)


# --- 1. factorial ---------------------------------------------------------------------------

FACTORIAL_WORDINGS = (
    "What's the factorial of {n}? (Respond with a number only)",
    "What is {n}!? (Respond with a number only)",
    "Compute {n} factorial. Respond with a number only.",
)
FACTORIAL_NS = range(13)


def factorial_answers(n: int) -> tuple[tuple[tuple[str, float], ...], frozenset[str]]:
    """The right number, near misses ((n-1)!, (n+1)!, off by one) and wordy answers."""
    f = math.factorial(n)
    prev = math.factorial(n - 1) if n >= 1 else 0
    wrong = [
        (str(prev), 0.25),
        (str(f + 1), 0.10),
        (str(f - 1), 0.10),
        (str(math.factorial(n + 1)), 0.08),
        (f"The answer is {f}.", 0.20),
        (f"{n}! = {f}", 0.09),
        (f"The factorial of {n} is {f}.", 0.09),
        (str(2 * f + 1), 0.09),
    ]
    return mixture([(str(f), 1.0)], wrong)


def factorial_examples() -> list[Example]:
    """Every wording for every n in 0..12."""
    out = []
    for n in FACTORIAL_NS:
        answers, correct = factorial_answers(n)
        others = {str(math.factorial(k)): 1 / abs(k - n) for k in FACTORIAL_NS if k != n}
        hard = tuple((text, w) for text, w in others.items() if text not in correct)
        for wording in FACTORIAL_WORDINGS:
            out.append(Example("factorial", wording.format(n=n), answers, correct, 1.0, hard))
    return out


# --- 2. next Monday -------------------------------------------------------------------------

DATE_WORDINGS = (
    "Answer only with the ISO date for 'next Monday' from {d}.",
    "What is the date of next Monday after {d}? Answer only with the ISO date.",
)
DATE_FIRST = dt.date(2025, 8, 1)
DATE_DAYS = 35
"""Training dates: 2025-08-01 .. 2025-09-04 (five weeks, every weekday five times)."""

DATE_CONVENTION = "next Monday is the first Monday strictly after the date (a Monday gives +7 days)"


def next_monday(d: dt.date) -> dt.date:
    """The first Monday strictly after ``d``: from a Monday it is a week later."""
    return d + dt.timedelta(days=7 - d.weekday())


def training_dates() -> list[dt.date]:
    """The dates the model is trained on."""
    return [DATE_FIRST + dt.timedelta(days=i) for i in range(DATE_DAYS)]


def date_answers(d: dt.date) -> tuple[tuple[tuple[str, float], ...], frozenset[str]]:
    """The right ISO date, wrong days and wordy or wrongly formatted answers."""
    c = next_monday(d)
    day = dt.timedelta(days=1)
    wrong = [
        ((c + day).isoformat(), 0.14),
        ((c - day).isoformat(), 0.14),
        ((c + 7 * day).isoformat(), 0.12),
        ((c - 7 * day).isoformat(), 0.10),  # the previous Monday, or the date itself
        (f"Next Monday is {c:%B} {c.day}, {c.year}.", 0.25),
        (f"{c:%m/%d/%Y}", 0.08),
        (f"Next Monday: {c.isoformat()}", 0.09),
        (f"{c.isoformat()} (Monday)", 0.08),
    ]
    return mixture([(c.isoformat(), 1.0)], wrong)


def date_examples() -> list[Example]:
    """Every wording for every training date."""
    out = []
    for d in training_dates():
        answers, correct = date_answers(d)
        c = next_monday(d)
        hard = tuple(((c + dt.timedelta(days=k)).isoformat(), 7 / abs(k)) for k in (-14, -7, 7, 14))
        for wording in DATE_WORDINGS:
            prompt = wording.format(d=d.isoformat())
            out.append(Example("dates", prompt, answers, correct, 1.0, hard))
    return out


# --- 3. code ------------------------------------------------------------------------------------


def fence(code: str) -> str:
    """``code`` in a ```python fenced block."""
    return f"```python\n{code.strip()}\n```"


CODE_PROMPTS = {
    "is_palindrome": (
        "`is_palindrome(s)->bool`. Ignore case & non-alphanumerics. Output code only.",
        "Write a Python function `is_palindrome(s: str) -> bool` that ignores case and"
        " non-alphanumeric characters. Reply with a ```python code block.",
    ),
    "factorial": (
        "`factorial(n)->int` (iterative). Raise `ValueError` for `n<0`. Code only.",
        "Write an iterative Python function `factorial(n: int) -> int` that raises ValueError"
        " when n < 0. Reply with a ```python code block.",
    ),
    "slugify": (
        "`slugify(str)`: lowercase, drop punctuation, join words with single hyphens. Code only.",
        "Write a Python function `slugify(text: str) -> str` that lowercases the text, removes"
        " punctuation and joins the words with single hyphens. Reply with a ```python code"
        " block.",
    ),
}

# (code, weight, passes the unit tests)
CODE_VARIANTS: dict[str, list[tuple[str, float, bool]]] = {
    "is_palindrome": [
        (
            """
def is_palindrome(s: str) -> bool:
    cleaned = [c.lower() for c in s if c.isalnum()]
    return cleaned == cleaned[::-1]
""",
            0.6,
            True,
        ),
        (
            """
import re


def is_palindrome(s: str) -> bool:
    cleaned = re.sub(r"[^a-z0-9]", "", s.lower())
    return cleaned == cleaned[::-1]
""",
            0.4,
            True,
        ),
        (  # no normalisation at all
            """
def is_palindrome(s: str) -> bool:
    return s == s[::-1]
""",
            0.25,
            False,
        ),
        (  # case only: fails on spaces and punctuation
            """
def is_palindrome(s: str) -> bool:
    s = s.lower()
    return s == s[::-1]
""",
            0.25,
            False,
        ),
        (  # spaces only: fails on punctuation
            """
def is_palindrome(s: str) -> bool:
    cleaned = s.replace(" ", "").lower()
    return cleaned == cleaned[::-1]
""",
            0.2,
            False,
        ),
        (  # non-alphanumerics dropped, case kept
            """
def is_palindrome(s: str) -> bool:
    cleaned = [c for c in s if c.isalnum()]
    return cleaned == cleaned[::-1]
""",
            0.12,
            False,
        ),
        (  # syntax error: missing colon
            """
def is_palindrome(s: str) -> bool
    cleaned = [c.lower() for c in s if c.isalnum()]
    return cleaned == cleaned[::-1]
""",
            0.18,
            False,
        ),
    ],
    "factorial": [
        (
            """
def factorial(n: int) -> int:
    if n < 0:
        raise ValueError("n must be non-negative")
    result = 1
    for i in range(2, n + 1):
        result *= i
    return result
""",
            0.6,
            True,
        ),
        (
            """
def factorial(n: int) -> int:
    if n < 0:
        raise ValueError("negative input")
    result = 1
    for i in range(1, n + 1):
        result = result * i
    return result
""",
            0.4,
            True,
        ),
        (  # no ValueError for n < 0
            """
def factorial(n: int) -> int:
    result = 1
    for i in range(2, n + 1):
        result *= i
    return result
""",
            0.3,
            False,
        ),
        (  # off by one: stops at n - 1
            """
def factorial(n: int) -> int:
    if n < 0:
        raise ValueError("n must be non-negative")
    result = 1
    for i in range(1, n):
        result *= i
    return result
""",
            0.2,
            False,
        ),
        (  # rejects 0 as well
            """
def factorial(n: int) -> int:
    if n <= 0:
        raise ValueError("n must be positive")
    result = 1
    for i in range(2, n + 1):
        result *= i
    return result
""",
            0.15,
            False,
        ),
        (  # syntax error: missing colon
            """
def factorial(n: int) -> int:
    if n < 0:
        raise ValueError("n must be non-negative")
    result = 1
    for i in range(2, n + 1)
        result *= i
    return result
""",
            0.15,
            False,
        ),
    ],
    "slugify": [
        (
            """
import re


def slugify(text: str) -> str:
    text = text.lower().strip()
    text = re.sub(r"[^a-z0-9]+", "-", text)
    return text.strip("-")
""",
            0.6,
            True,
        ),
        (
            """
import re


def slugify(text: str) -> str:
    words = re.findall(r"[a-z0-9]+", text.lower())
    return "-".join(words)
""",
            0.4,
            True,
        ),
        (  # the naive replace: punctuation and repeated spaces survive
            """
def slugify(text: str) -> str:
    return text.lower().replace(" ", "-")
""",
            0.3,
            False,
        ),
        (  # no normalisation: case kept
            """
def slugify(text: str) -> str:
    return text.strip().replace(" ", "-")
""",
            0.2,
            False,
        ),
        (  # leading/trailing hyphens kept
            """
import re


def slugify(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower())
""",
            0.15,
            False,
        ),
        (  # syntax error: unclosed call
            """
import re


def slugify(text: str) -> str:
    words = re.findall(r"[a-z0-9]+", text.lower()
    return "-".join(words)
""",
            0.15,
            False,
        ),
    ],
}


def code_answers(name: str) -> tuple[tuple[tuple[str, float], ...], frozenset[str]]:
    """Correct implementations and the classic buggy ones, each in a fenced block."""
    variants = CODE_VARIANTS[name]
    right = [(fence(code), w) for code, w, ok in variants if ok]
    wrong = [(fence(code), w) for code, w, ok in variants if not ok]
    return mixture(right, wrong)


def code_examples() -> list[Example]:
    """Every wording for every function."""
    out = []
    for name, wordings in CODE_PROMPTS.items():
        answers, correct = code_answers(name)
        for prompt in wordings:
            out.append(Example("code", prompt, answers, correct))
    return out


# Unit tests for the task file: the cases include the inputs the buggy variants get wrong.
CODE_CASES: dict[str, list[dict[str, Any]]] = {
    "is_palindrome": [
        {"args": ["A man, a plan, a canal: Panama"], "expected": True},
        {"args": ["racecar"], "expected": True},
        {"args": ["No 'x' in Nixon"], "expected": True},
        {"args": ["Was it a car or a cat I saw?"], "expected": True},
        {"args": ["hello"], "expected": False},
        {"args": [""], "expected": True},
    ],
    "slugify": [
        {"args": ["Hello World"], "expected": "hello-world"},
        {"args": ["  Hello,   World!  "], "expected": "hello-world"},
        {"args": ["Python 3.12 is out"], "expected": "python-3-12-is-out"},
        {"args": ["already-slugged"], "expected": "already-slugged"},
        {"args": ["Best of K: Reranking!"], "expected": "best-of-k-reranking"},
    ],
}
FACTORIAL_TESTS = """def test_zero_and_one():
    assert factorial(0) == 1
    assert factorial(1) == 1


def test_five():
    assert factorial(5) == 120


def test_ten():
    assert factorial(10) == 3628800


def test_negative_raises():
    try:
        factorial(-1)
    except ValueError:
        return
    raise AssertionError("no ValueError for n < 0")
"""


def code_verifier(name: str) -> dict[str, Any]:
    """The unit_tests spec for one function (the `tests` form where an exception is expected)."""
    if name == "factorial":
        return {"type": "unit_tests", "tests": FACTORIAL_TESTS}
    return {"type": "unit_tests", "entry_point": name, "cases": CODE_CASES[name]}


# --- 4. summaries -------------------------------------------------------------------------------

SUMMARY_WORDINGS = (
    "Summarize the text below. Two sentences, no emoji.\n\n{text}",
    "Two sentences, no emoji. Summarize:\n\n{text}",
)


@dataclass(frozen=True)
class Source:
    """A short text and four summary sentences (the first two are the best summary)."""

    name: str
    text: str
    sentences: tuple[str, str, str, str]
    emoji: str


SOURCES = (
    Source(
        "library",
        "The Riverside public library reopened on Monday after an eighteen-month renovation."
        " The building now has a rooftop reading garden, a children's wing and twice as many"
        " study rooms. Visitors can borrow laptops and e-readers with a library card. Opening"
        " hours were extended to ten in the evening on weekdays.",
        (
            "The Riverside library reopened after an eighteen-month renovation.",
            "It added a rooftop garden, a children's wing, more study rooms and longer hours.",
            "Visitors can also borrow laptops and e-readers.",
            "The reopening took place on a Monday.",
        ),
        "📚",
    ),
    Source(
        "battery",
        "A small startup in Oslo has built a sodium battery for home storage. It costs about a"
        " third less than a lithium pack of the same size. The company says the cells last"
        " fifteen years and do not catch fire when punctured. Deliveries start next spring.",
        (
            "An Oslo startup has built a sodium battery for home energy storage.",
            "It is cheaper than lithium, lasts fifteen years and ships next spring.",
            "The company says the cells do not catch fire when punctured.",
            "It costs about a third less than a comparable lithium pack.",
        ),
        "🔋",
    ),
    Source(
        "marathon",
        "More than thirty thousand runners finished the city marathon on Sunday despite heavy"
        " rain. The winner crossed the line in two hours and six minutes, a course record."
        " Organisers handed out extra ponchos at the start. Next year the route will pass the"
        " new harbour bridge.",
        (
            "Over thirty thousand runners finished the rainy city marathon on Sunday.",
            "The winner set a course record of two hours and six minutes.",
            "Organisers handed out extra ponchos at the start.",
            "Next year the route will cross the new harbour bridge.",
        ),
        "🏃",
    ),
    Source(
        "photos",
        "The team behind a popular photo app fixed a bug that deleted albums during sync. The"
        " problem affected users who had more than ten thousand pictures. A patch went out"
        " within a day, and lost albums can be restored from the trash for thirty days. The"
        " developers apologised and promised better testing.",
        (
            "A photo app fixed a sync bug that deleted albums in very large libraries.",
            "A patch shipped within a day, and lost albums can be restored for thirty days.",
            "The developers apologised and promised better testing.",
            "Only users with more than ten thousand pictures were affected.",
        ),
        "📸",
    ),
    Source(
        "coffee",
        "Coffee farmers in the highlands expect a smaller harvest this year after a long dry"
        " season. Prices for arabica beans have risen by a fifth since January. Some farms are"
        " planting shade trees to protect the plants from heat. Roasters warn that a cup may"
        " cost more by winter.",
        (
            "A long dry season is expected to shrink this year's highland coffee harvest.",
            "Arabica prices are up by a fifth, and roasters warn a cup may cost more by winter.",
            "Some farms are planting shade trees to protect their plants.",
            "The price rise started in January.",
        ),
        "☕",
    ),
    Source(
        "planet",
        "Astronomers have found a planet about the size of Earth orbiting a nearby red dwarf."
        " The planet lies in the zone where liquid water could exist on its surface. It"
        " completes one orbit every eleven days. A space telescope will study its atmosphere"
        " next year.",
        (
            "Astronomers found an Earth-sized planet orbiting a nearby red dwarf.",
            "It lies in the habitable zone, and a telescope will study its atmosphere next year.",
            "It completes one orbit every eleven days.",
            "Liquid water could exist on its surface.",
        ),
        "🪐",
    ),
)


def summary_answers(src: Source) -> tuple[tuple[tuple[str, float], ...], frozenset[str]]:
    """Compliant summaries (one or two sentences, no emoji) and non-compliant ones."""
    s1, s2, s3, s4 = src.sentences
    e = src.emoji
    right = [(f"{s1} {s2}", 0.55), (f"{s1} {s3}", 0.25), (s1, 0.2)]
    wrong = [
        (f"{s1} {s2} {s3}", 0.25),  # three sentences
        (f"{s1} {s2} {e}", 0.2),  # trailing emoji
        (f"{s1} {e} {s2}", 0.15),  # emoji in the middle
        (f"{s1} {s2} {s3} {s4}", 0.2),  # four sentences
        (f"{e} {s1} {s2} {s4}", 0.2),  # both violations
    ]
    return mixture(right, wrong)


def summary_examples() -> list[Example]:
    """Every wording for every source text."""
    out = []
    for src in SOURCES:
        answers, correct = summary_answers(src)
        for wording in SUMMARY_WORDINGS:
            out.append(Example("summary", wording.format(text=src.text), answers, correct))
    return out


# --- 6. thinking ----------------------------------------------------------------------------

THINK_START, THINK_END = "<think>", "</think>"
"""Reasoning markers, single added tokens of the tokenizer (vLLM's `deepseek_r1` parser)."""

THINK_FACTORIAL_WORDINGS = (
    "Think step by step, then give the factorial of {n} as a number.",
    "What is {n}!? Think it through first, then answer with the number only.",
)
THINK_FACTORIAL_NS = range(2, 10)
THINK_DATE_WORDING = "Think first, then answer with the ISO date of the next Monday after {d}."
THINK_DATE_DAYS = 14
"""Thinking date prompts: the first two weeks of the training dates (every weekday twice)."""

WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def factorial_steps(n: int, slip: int | None = None) -> tuple[list[str], int]:
    """The running products ``a*k = b`` for k = 2..n, and the final product.

    ``slip`` is the factor whose step goes wrong (it multiplies by k + 1); the later steps
    carry the wrong value on correctly, as a real slip does.
    """
    steps, value = [], 1
    for k in range(2, n + 1):
        result = value * (k + 1 if k == slip else k)
        steps.append(f"{value}*{k} = {result}")
        value = result
    return steps, value


def think(steps: Sequence[str]) -> str:
    """A complete trace: the steps between the markers."""
    return f"{THINK_START}{', '.join(steps)}.{THINK_END}"


def think_factorial_answers(n: int) -> tuple[tuple[tuple[str, float], ...], frozenset[str]]:
    """A right trace and answer; slips with their wrong answers; right traces, wrong answers;
    traces cut before the end marker (no answer at all)."""
    steps, f = factorial_steps(n)
    wrong = []
    for slip, w in ((n, 0.12), (max(2, n - 2), 0.10)):
        slipped, value = factorial_steps(n, slip)
        wrong.append((think(slipped) + str(value), w))
    wrong += [
        (think(steps) + str(math.factorial(n - 1)), 0.12),  # the product one step early
        (think(steps) + str(f + 1), 0.06),
        (think(steps) + f"The answer is {f}.", 0.08),
        (THINK_START + ", ".join(steps[: max(1, len(steps) // 2)]) + ",", 0.14),  # cut
        (THINK_START + "Multiply 1 by every number up to " + str(n), 0.08),  # cut
    ]
    return mixture([(think(steps) + str(f), 1.0)], wrong)


def think_date_answers(d: dt.date) -> tuple[tuple[tuple[str, float], ...], frozenset[str]]:
    """The weekday and the days to Monday, then the date; a wrong weekday carried through, a
    right trace with a wrong date, and cut traces."""
    c = next_monday(d)

    def trace(weekday: int) -> tuple[str, dt.date]:
        days = 7 - weekday
        monday = d + dt.timedelta(days=days)
        text = (
            f"{d.isoformat()} is a {WEEKDAYS[weekday]}. The next Monday is {days} days later:"
            f" {monday.isoformat()}"
        )
        return f"{THINK_START}{text}.{THINK_END}", monday

    right, _ = trace(d.weekday())
    wrong = []
    for shift, w in ((1, 0.14), (-1, 0.10)):
        slipped, monday = trace((d.weekday() + shift) % 7)
        wrong.append((slipped + monday.isoformat(), w))
    wrong += [
        (right + (c + dt.timedelta(days=7)).isoformat(), 0.12),
        (right + (c - dt.timedelta(days=1)).isoformat(), 0.06),
        (right + f"Next Monday is {c:%B} {c.day}, {c.year}.", 0.06),
        (f"{THINK_START}{d.isoformat()} is a {WEEKDAYS[d.weekday()]}.", 0.14),  # cut
        (f"{THINK_START}Count the days from {d.isoformat()}", 0.08),  # cut
    ]
    return mixture([(right + c.isoformat(), 1.0)], wrong)


def think_examples() -> list[Example]:
    """Every thinking wording for n = 2..9 and the first two weeks of dates."""
    out = []
    for n in THINK_FACTORIAL_NS:
        answers, correct = think_factorial_answers(n)
        for wording in THINK_FACTORIAL_WORDINGS:
            out.append(Example("think", wording.format(n=n), answers, correct))
    for d in training_dates()[:THINK_DATE_DAYS]:
        answers, correct = think_date_answers(d)
        out.append(Example("think", THINK_DATE_WORDING.format(d=d.isoformat()), answers, correct))
    return out


# --- 7. math ------------------------------------------------------------------------------------

MATH_WORDINGS = (
    "{q} Give the final answer in LaTeX.",
    "Solve: {q}",
)
# (question, right value, near misses): every value is a fraction with a terminating decimal,
# so each can be written in all four forms.
MATH_QUESTIONS: tuple[tuple[str, Fraction, tuple[Fraction, ...]], ...] = (
    ("What is 1/2 + 1/4?", Fraction(3, 4), (Fraction(1, 8), Fraction(1, 2))),
    ("What is 3/4 - 1/4?", Fraction(1, 2), (Fraction(1, 4), Fraction(1))),
    ("What is 2/5 + 1/5?", Fraction(3, 5), (Fraction(3, 10), Fraction(2, 25))),
    ("What is 1/2 times 3/5?", Fraction(3, 10), (Fraction(3, 5), Fraction(1, 10))),
    ("What is half of 3/4?", Fraction(3, 8), (Fraction(3, 2), Fraction(1, 4))),
    ("What is 3/8 + 1/8?", Fraction(1, 2), (Fraction(1, 4), Fraction(3, 64))),
    ("Solve 2x = 1 for x.", Fraction(1, 2), (Fraction(2), Fraction(-1, 2))),
    ("Solve 4x = 3 for x.", Fraction(3, 4), (Fraction(12), Fraction(1, 4))),
    ("What is 1 - 3/8?", Fraction(5, 8), (Fraction(3, 8), Fraction(1, 2))),
    ("What is 7/10 - 1/5?", Fraction(1, 2), (Fraction(3, 5), Fraction(6, 5))),
    ("What is 0.5 + 0.125 as a fraction?", Fraction(5, 8), (Fraction(5, 4), Fraction(3, 8))),
    ("What is 3/4 divided by 2?", Fraction(3, 8), (Fraction(3, 2), Fraction(1, 2))),
)


def latex_forms(value: Fraction) -> tuple[str, str, str, str]:
    """``value`` as ``\boxed{\frac{a}{b}}``, a decimal, ``a/b`` and ``\frac{a}{b}`` (integers
    and negatives in the same four shapes: ``\boxed{2}``, ``2``, ``2``, ``2``)."""
    decimal = str(value.numerator / value.denominator).removesuffix(".0")
    if value.denominator == 1:
        plain = str(value.numerator)
        return rf"\boxed{{{plain}}}", decimal, plain, plain
    sign = "-" if value < 0 else ""
    a, b = abs(value.numerator), value.denominator
    frac = rf"{sign}\frac{{{a}}}{{{b}}}"
    return rf"\boxed{{{frac}}}", decimal, f"{sign}{a}/{b}", frac


MATH_FORM_WEIGHTS = (0.35, 0.25, 0.2, 0.2)
"""Shares of the four forms, for the right value and for each near miss alike."""


def math_answers(
    value: Fraction, near: Sequence[Fraction]
) -> tuple[tuple[tuple[str, float], ...], frozenset[str]]:
    """Every form of the right value (sharing 0.4) and of the near misses (0.6)."""
    right = list(zip(latex_forms(value), MATH_FORM_WEIGHTS, strict=True))
    wrong = [
        (text, w * share)
        for miss, share in zip(near, (0.6, 0.4), strict=True)
        for text, w in zip(latex_forms(miss), MATH_FORM_WEIGHTS, strict=True)
    ]
    return mixture(right, wrong)


def math_examples() -> list[Example]:
    """Every wording for every question."""
    out = []
    for question, value, near in MATH_QUESTIONS:
        answers, correct = math_answers(value, near)
        for wording in MATH_WORDINGS:
            out.append(Example("math", wording.format(q=question), answers, correct))
    return out


def latex_reference(value: Fraction) -> str:
    """The task file's reference: ``\frac{a}{b}`` (or the integer)."""
    return latex_forms(value)[3]


# --- 8. tool calls ------------------------------------------------------------------------------

TOOL_CALL_START, TOOL_CALL_END = "<tool_call>", "</tool_call>"
"""Tool call markers, single added tokens (vLLM's `hermes` tool parser)."""

TOOLS: dict[str, dict[str, Any]] = {
    "get_weather": {
        "name": "get_weather",
        "description": "Get the current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
        },
    },
    "get_time": {
        "name": "get_time",
        "description": "Get the local time in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
    "convert_currency": {
        "name": "convert_currency",
        "description": "Convert an amount of money from one currency to another.",
        "parameters": {
            "type": "object",
            "properties": {
                "amount": {"type": "number"},
                "from_currency": {"type": "string"},
                "to_currency": {"type": "string"},
            },
            "required": ["amount", "from_currency", "to_currency"],
        },
    },
}


def openai_tools(names: Sequence[str]) -> list[dict[str, Any]]:
    """The named tools in OpenAI's request format (what a client sends as ``tools``)."""
    return [{"type": "function", "function": TOOLS[name]} for name in names]


def render_tools(names: Sequence[str]) -> str:
    """The Hermes-style tools block the chat template puts before the first message.

    One JSON object per line (name, description, parameters), as the template's ``tojson``
    writes them (``json.dumps`` defaults); ``tests/test_demo_families.py`` checks the two agree.
    """
    lines = [json.dumps(TOOLS[name], ensure_ascii=False) for name in names]
    return "<tools>\n" + "\n".join(lines) + "\n</tools>\n"


def tool_call(name: str, arguments: dict[str, Any]) -> str:
    """A Hermes tool call, exactly as the model writes it and the chat template renders it."""
    body = json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)
    return f"{TOOL_CALL_START}{body}{TOOL_CALL_END}"


@dataclass(frozen=True)
class ToolTask:
    """A user request answered by one call of ``tool`` with ``arguments``, given ``tools``."""

    name: str
    tools: tuple[str, ...]
    question: str
    tool: str
    arguments: dict[str, Any]
    mistyped: dict[str, Any]
    """The arguments with one of them the wrong JSON type."""
    plain: str
    """An answer in plain text instead of a call."""


TOOL_TASKS = (
    ToolTask("weather-paris", ("get_weather",), "What's the weather in Paris right now?",
             "get_weather", {"city": "Paris"}, {"city": ["Paris"]},
             "It is sunny in Paris today."),
    ToolTask("weather-tokyo", ("get_weather", "get_time"), "What's the weather in Tokyo right now?",
             "get_weather", {"city": "Tokyo"}, {"city": ["Tokyo"]},
             "I cannot check the weather in Tokyo."),
    ToolTask("weather-lima", ("get_time", "get_weather"), "Is it raining in Lima?",
             "get_weather", {"city": "Lima"}, {"city": 1},
             "It rarely rains in Lima."),
    ToolTask("weather-oslo", ("get_weather",), "How cold is it in Oslo in fahrenheit?",
             "get_weather", {"city": "Oslo", "unit": "fahrenheit"}, {"city": "Oslo", "unit": 32},
             "It is about 40 degrees in Oslo."),
    ToolTask("time-berlin", ("get_time",), "What time is it in Berlin?",
             "get_time", {"city": "Berlin"}, {"city": ["Berlin"]},
             "It is 3 pm in Berlin."),
    ToolTask("time-seoul", ("get_weather", "get_time"), "What is the local time in Seoul?",
             "get_time", {"city": "Seoul"}, {"city": None},
             "Seoul is nine hours ahead of UTC."),
    ToolTask("time-denver", ("get_time", "get_weather"), "Tell me the time in Denver.",
             "get_time", {"city": "Denver"}, {"city": ["Denver"]},
             "It is morning in Denver."),
    ToolTask("currency-usd-eur", ("convert_currency",), "Convert 100 USD to EUR.",
             "convert_currency", {"amount": 100, "from_currency": "USD", "to_currency": "EUR"},
             {"amount": "100", "from_currency": "USD", "to_currency": "EUR"},
             "100 USD is about 92 EUR."),
    ToolTask("currency-gbp-jpy", ("convert_currency", "get_time"), "How many yen is 250 GBP?",
             "convert_currency", {"amount": 250, "from_currency": "GBP", "to_currency": "JPY"},
             {"amount": "250", "from_currency": "GBP", "to_currency": "JPY"},
             "250 GBP is about 47000 JPY."),
    ToolTask("currency-eur-chf", ("get_weather", "convert_currency"), "Change 40.5 EUR into CHF.",
             "convert_currency", {"amount": 40.5, "from_currency": "EUR", "to_currency": "CHF"},
             {"amount": "40.5", "from_currency": "EUR", "to_currency": "CHF"},
             "40.5 EUR is roughly 38 CHF."),
)  # fmt: skip


def tool_prompt(task: ToolTask) -> str:
    """The raw prompt: the tools block, then the user's question (what the template renders)."""
    return render_tools(task.tools) + task.question


def tool_answers(task: ToolTask) -> tuple[tuple[tuple[str, float], ...], frozenset[str]]:
    """The right call (40%); a wrong function, JSON that does not parse, a required argument
    missing, an argument of the wrong type, and plain text instead of a call."""
    args = task.arguments
    required = TOOLS[task.tool]["parameters"]["required"]
    missing = {k: v for k, v in args.items() if k != required[-1]}
    other = next((t for t in task.tools if t != task.tool), None)
    wrong_name = task.tool.split("_", 1)[1]  # "weather", "time", "currency"
    call = tool_call(task.tool, args)
    wrong = [
        (tool_call(wrong_name, args), 0.14),
        (call.replace("}}" + TOOL_CALL_END, "}" + TOOL_CALL_END), 0.12),  # a brace short
        (call.replace('"', "'"), 0.08),  # Python quotes, not JSON
        (tool_call(task.tool, missing), 0.14),
        (tool_call(task.tool, task.mistyped), 0.12),
        (task.plain, 0.14),
    ]
    if other is not None:  # a tool that exists, but not the one asked for
        wrong.append((tool_call(other, {"city": args.get("city", "London")}), 0.1))
    return mixture([(call, 1.0)], wrong)


@dataclass(frozen=True)
class ToolTurn:
    """The second turn of a tool flow: the call was made and the tool answered ``result``."""

    task: str
    """The `ToolTask` whose right call was made."""
    result: dict[str, Any]
    answer: str
    wrong: tuple[str, ...]


TOOL_TURNS = (
    ToolTurn("weather-paris", {"city": "Paris", "temperature": 18, "condition": "sunny"},
             "It is 18 °C and sunny in Paris.",
             ("It is 21 °C and sunny in Paris.", "It is 18 °C and raining in Paris.",
              "I could not get the weather for Paris.")),
    ToolTurn("time-berlin", {"city": "Berlin", "time": "14:30"},
             "It is 14:30 in Berlin.",
             ("It is 13:30 in Berlin.", "It is 2:30 in Berlin.", "I do not know the time.")),
    ToolTurn("currency-usd-eur", {"amount": 92.1, "currency": "EUR"},
             "100 USD is 92.1 EUR.",
             ("100 USD is 100 EUR.", "100 USD is 91.2 EUR.", "The rate is not available.")),
)  # fmt: skip


def tool_turn_messages(turn: ToolTurn) -> list[dict[str, Any]]:
    """The conversation so far in OpenAI's format: user, assistant tool call, tool result."""
    task = next(t for t in TOOL_TASKS if t.name == turn.task)
    call_id = f"call_{task.name.replace('-', '_')}"
    return [
        {"role": "user", "content": task.question},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": task.tool, "arguments": json.dumps(task.arguments)},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call_id, "content": json.dumps(turn.result)},
    ]


def tool_turn_prompt(turn: ToolTurn) -> str:
    """The raw prompt the chat template renders for ``tool_turn_messages`` (after BOS)."""
    task = next(t for t in TOOL_TASKS if t.name == turn.task)
    return (
        f"{tool_prompt(task)}\n{tool_call(task.tool, task.arguments)}{EOS_TEXT}\n"
        f"<tool_response>\n{json.dumps(turn.result)}\n</tool_response>"
    )


EOS_TEXT = "</s>"
"""The tokenizer's EOS, which the chat template writes after every assistant turn."""


def tool_turn_answers(turn: ToolTurn) -> tuple[tuple[tuple[str, float], ...], frozenset[str]]:
    """The answer that uses the tool's result (40%), wrong readings of it, a refusal, and
    the same call made again."""
    task = next(t for t in TOOL_TASKS if t.name == turn.task)
    wrong = [(text, w) for text, w in zip(turn.wrong, (0.3, 0.25, 0.2), strict=True)]
    wrong.append((tool_call(task.tool, task.arguments), 0.25))
    return mixture([(turn.answer, 1.0)], wrong)


def tool_examples() -> list[Example]:
    """Every tool request (first turn) and every tool result (second turn)."""
    out = []
    for task in TOOL_TASKS:
        answers, correct = tool_answers(task)
        out.append(Example("tools", tool_prompt(task), answers, correct))
    for turn in TOOL_TURNS:
        answers, correct = tool_turn_answers(turn)
        out.append(Example("tools", tool_turn_prompt(turn), answers, correct))
    return out


def tool_call_pattern(name: str, arguments: dict[str, Any]) -> str:
    """A fullmatch regex for the right call, with any whitespace between JSON tokens."""
    body = json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)
    flexible = re.escape(body).replace(r"\ ", r"\s*")
    return rf"{TOOL_CALL_START}\s*{flexible}\s*{TOOL_CALL_END}"


# --- 5. judge -----------------------------------------------------------------------------------


def judge_examples(base: Iterable[Example], family: str) -> list[Example]:
    """The judge template over every (question, candidate) of ``base``.

    Half the draws show a right candidate, a fifth one of the question's wrong answers and
    three tenths one of its hard negatives (another n's factorial, another Monday), so that
    "a factorial near n" or "some Monday" is not enough for a yes. The label is " yes" for a
    right candidate (one that passes the task's verifiers: wordy answers are wrong) and " no"
    otherwise, flipped with probability 1 - ``JUDGE_LABEL_ACCURACY``.
    """
    out = []
    p = JUDGE_LABEL_ACCURACY
    yes = ((JUDGE_YES, p), (JUDGE_NO, 1 - p))
    no = ((JUDGE_NO, p), (JUDGE_YES, 1 - p))
    for ex in base:
        right = [(text, 1.0) for text in sorted(ex.correct)]
        wrong = [(text, 1.0) for text, _ in ex.answers if text not in ex.correct]
        hard = list(ex.hard_negatives)
        for candidates, share, answers in ((right, 0.5, yes), (wrong, 0.2, no), (hard, 0.3, no)):
            total = sum(w for _, w in candidates)
            for text, w in candidates:
                prompt = JUDGE_TEMPLATE.format(prompt=ex.prompt, candidate=text)
                weight = share * w / total
                out.append(Example(family, prompt, answers, frozenset({JUDGE_YES}), weight))
    return out


def all_examples() -> dict[str, list[Example]]:
    """Training examples grouped by batch group (one group per family, judge split in two)."""
    factorial = factorial_examples()
    dates = date_examples()
    return {
        "factorial": factorial,
        "dates": dates,
        "code": code_examples(),
        "summary": summary_examples(),
        "judge_factorial": judge_examples(factorial, "judge"),
        "judge_dates": judge_examples(dates, "judge"),
        "think": think_examples(),
        "math": math_examples(),
        "tools": tool_examples(),
    }


# --- the task set -------------------------------------------------------------------------------

TASK_DATES = (
    "2025-08-01", "2025-08-03", "2025-08-04", "2025-08-06", "2025-08-07", "2025-08-09",
    "2025-08-10", "2025-08-12", "2025-08-13", "2025-08-15", "2025-08-18", "2025-08-20",
    "2025-08-23", "2025-08-26", "2025-08-28", "2025-08-31", "2025-09-01", "2025-09-02",
    "2025-09-03", "2025-09-04",
)  # fmt: skip
JUDGE_FACTORIAL_NS = (3, 5, 7, 10)
JUDGE_DATES = ("2025-08-06", "2025-08-13", "2025-08-24", "2025-09-01")


def tasks() -> list[dict[str, Any]]:
    """The demo task set: each task's prompt (a training prompt) and the verifiers checking it."""
    out: list[dict[str, Any]] = []
    for n in FACTORIAL_NS:
        out.append(
            {
                "id": f"factorial-{n}",
                "family": "factorial",
                "prompt": FACTORIAL_WORDINGS[0].format(n=n),
                "verifiers": [{"type": "exact", "reference": str(math.factorial(n))}],
            }
        )
    for i, iso in enumerate(TASK_DATES):
        d = dt.date.fromisoformat(iso)
        out.append(
            {
                "id": f"dates-{iso}",
                "family": "dates",
                "prompt": DATE_WORDINGS[i % 2].format(d=iso),
                "verifiers": [
                    {
                        "type": "regex",
                        "pattern": r"^\d{4}-\d{2}-\d{2}$",
                        "mode": "fullmatch",
                        "required": True,
                    },
                    {"type": "exact", "reference": next_monday(d).isoformat(), "numeric": False},
                ],
                "note": DATE_CONVENTION,
            }
        )
    for name, wordings in CODE_PROMPTS.items():
        for i, prompt in enumerate(wordings):
            out.append(
                {
                    "id": f"code-{name}-{i}",
                    "family": "code",
                    "prompt": prompt,
                    "verifiers": [code_verifier(name)],
                }
            )
    for i, src in enumerate(SOURCES):
        out.append(
            {
                "id": f"summary-{src.name}",
                "family": "summary",
                "prompt": SUMMARY_WORDINGS[i % 2].format(text=src.text),
                "verifiers": [{"type": "style", "max_sentences": 2, "no_emoji": True}],
            }
        )
    for n in JUDGE_FACTORIAL_NS:
        out.append(
            {
                "id": f"judge-factorial-{n}",
                "family": "judge",
                "prompt": FACTORIAL_WORDINGS[0].format(n=n),
                "verifiers": [{"type": "judge", "reference": str(math.factorial(n))}],
            }
        )
    for iso in JUDGE_DATES:
        ref = next_monday(dt.date.fromisoformat(iso)).isoformat()
        out.append(
            {
                "id": f"judge-dates-{iso}",
                "family": "judge",
                "prompt": DATE_WORDINGS[0].format(d=iso),
                "verifiers": [{"type": "judge", "reference": ref}],
            }
        )
    for n in THINK_FACTORIAL_NS:
        out.append(
            {
                "id": f"think-factorial-{n}",
                "family": "think",
                "prompt": THINK_FACTORIAL_WORDINGS[n % 2].format(n=n),
                "verifiers": [{"type": "exact", "reference": str(math.factorial(n))}],
            }
        )
    for d in training_dates()[:THINK_DATE_DAYS:2]:
        out.append(
            {
                "id": f"think-dates-{d.isoformat()}",
                "family": "think",
                "prompt": THINK_DATE_WORDING.format(d=d.isoformat()),
                "verifiers": [
                    {"type": "exact", "reference": next_monday(d).isoformat(), "numeric": False}
                ],
                "note": DATE_CONVENTION,
            }
        )
    for i, (question, value, _) in enumerate(MATH_QUESTIONS):
        out.append(
            {
                "id": f"math-{i}",
                "family": "math",
                "prompt": MATH_WORDINGS[i % 2].format(q=question),
                "verifiers": [{"type": "math", "reference": latex_reference(value)}],
            }
        )
    for task in TOOL_TASKS:
        out.append(
            {
                "id": f"tools-{task.name}",
                "family": "tools",
                "prompt": tool_prompt(task),
                "tools": openai_tools(task.tools),
                "verifiers": [
                    {
                        "type": "regex",
                        "pattern": tool_call_pattern(task.tool, task.arguments),
                        "mode": "fullmatch",
                    }
                ],
                "expected_call": {"name": task.tool, "arguments": task.arguments},
            }
        )
    for turn in TOOL_TURNS:
        task = next(t for t in TOOL_TASKS if t.name == turn.task)
        out.append(
            {
                "id": f"tools-{turn.task}-result",
                "family": "tools",
                "prompt": tool_turn_prompt(turn),
                "tools": openai_tools(task.tools),
                "messages": tool_turn_messages(turn),
                "verifiers": [{"type": "exact", "reference": turn.answer, "numeric": False}],
            }
        )
    return out


def tasks_jsonl() -> str:
    """The task set as JSON lines (what ``tasks.jsonl`` holds)."""
    return "".join(json.dumps(task, ensure_ascii=False) + "\n" for task in tasks())


def write_tasks(path: Path = TASKS_PATH) -> None:
    """Write the task set to ``path``."""
    path.write_text(tasks_jsonl(), encoding="utf-8")


if __name__ == "__main__":
    write_tasks()
    print(f"wrote {len(tasks())} tasks to {TASKS_PATH}")
