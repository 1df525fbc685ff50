"""The `math` verifier: answers against references by math-verify's documented rules.

The table is math-verify's documented behaviour (its README and tests: LaTeX and plain forms,
fractions and decimals to six digits, percentages, sets and their unions, intervals, equations
against values, expressions up to algebra, matrices), each pair with what it should say.
``MATH_VERIFY_MISSES`` are the pairs it gets wrong, asserted as it has them so that a release
that fixes them (or breaks others) is noticed.
"""

from __future__ import annotations

import pytest

from bestofk.verifiers import registry
from bestofk.verifiers.base import Candidate, RequestContext, Verifier, VerifierResources
from bestofk.verifiers.math_verifier import check_math

PAIRS = [
    # reference, candidate, equal
    ("\\frac{1}{2}", "\\boxed{0.5}", True),
    ("\\frac{1}{2}", "\\boxed{\\frac12}", True),
    ("\\frac{1}{2}", "1/2", True),
    ("\\frac{1}{2}", "\\frac12", True),
    ("0.5", "\\boxed{\\dfrac{1}{2}}", True),
    ("\\frac{1}{2}", "\\boxed{\\frac{1}{3}}", False),
    ("120", "The answer is \\boxed{120}.", True),
    ("120", "The answer is 120.", True),
    ("120", "120.0", True),
    ("120", "\\boxed{121}", False),
    ("120", "24", False),
    ("1000", "1,000", True),
    ("1000", "10^{3}", True),
    ("10^{3}", "\\boxed{1000}", True),
    ("1/3", "0.333333", True),
    ("1/3", "0.33", False),
    ("50\\%", "\\boxed{0.5}", True),
    ("50\\%", "\\boxed{50\\%}", True),
    ("0.5", "50\\%", True),
    ("50\\%", "\\boxed{0.05}", False),
    ("\\{1,3\\} \\cup \\{2,4\\}", "$\\{1,2,3,4\\}$", True),
    ("\\{1,2\\}", "\\boxed{\\{1,3\\}}", False),
    ("1,2", "\\boxed{2,1}", True),
    ("[0,1)", "\\boxed{[0,1)}", True),
    ("[0,1)", "\\boxed{(0,1]}", False),
    ("(1,2)", "\\boxed{(2,1)}", False),
    ("x^2+2x+1", "\\boxed{(x+1)^2}", True),
    ("x^2+2x+1", "\\boxed{(x-1)^2}", False),
    ("2", "\\boxed{x = 2}", True),
    ("y = 2x+1", "\\boxed{2x+1}", True),
    ("\\sqrt{2}/2", "\\boxed{\\frac{1}{\\sqrt{2}}}", True),
    ("2\\sqrt{3}", "\\boxed{\\sqrt{12}}", True),
    ("\\sqrt{3}", "\\boxed{\\sqrt{2}}", False),
    ("\\begin{pmatrix}1\\\\2\\end{pmatrix}", "\\boxed{\\begin{pmatrix}1\\\\2\\end{pmatrix}}", True),
    ("-1", "\\boxed{1}", False),
    ("\\infty", "\\boxed{\\infty}", True),
    ("3", "I think it is 3 apples", True),
    ("120", "<think>5! is 120</think>\\boxed{24}", False),  # the last boxed is the answer
]  # fmt: skip

MATH_VERIFY_MISSES = [
    # reference, candidate, what math-verify says, why it is wrong
    ("\\frac{1}{2}", "It is \\frac12", False, "bare LaTeX in prose (no $ or \\boxed) is not found"),
    ("1000", "The answer is 10^{3}.", False, "in prose, 10^{3} is read as its base, 10"),
    ("0.5", "so 50\\% of them", False, "in prose, 50\\% is read as 50, not 50 percent"),
    ("\\pi", "\\boxed{3.14159}", False, "pi to five places is not pi (strict, arguably right)"),
]  # fmt: skip


@pytest.mark.parametrize(("reference", "candidate", "equal"), PAIRS)
def test_math_verify_table(reference: str, candidate: str, equal: bool) -> None:
    verdict = check_math(reference, candidate)
    assert verdict.passed is equal, verdict.detail
    assert verdict.score == float(equal)
    assert verdict.error is None


def test_the_table_is_large_and_balanced() -> None:
    assert len(PAIRS) >= 30
    assert sum(equal for *_, equal in PAIRS) >= 10
    assert sum(not equal for *_, equal in PAIRS) >= 10


@pytest.mark.parametrize(("reference", "candidate", "says", "why"), MATH_VERIFY_MISSES)
def test_what_math_verify_gets_wrong(reference: str, candidate: str, says: bool, why: str) -> None:
    assert check_math(reference, candidate).passed is says, why


def test_plain_integers_are_checked_inline_like_math_verify() -> None:
    assert check_math("120", "120", inline=True).passed
    assert not check_math("120", "24", inline=True).passed
    assert check_math("120", "0120", inline=True).passed == check_math("120", "0120").passed


def test_no_answer_and_unreadable_reference() -> None:
    verdict = check_math("120", "I do not know")
    assert not verdict.passed and verdict.error is None
    assert "no mathematical answer" in verdict.detail
    bad = check_math("Paris", "\\boxed{1}")
    assert bad.error is not None and "reference" in bad.error


async def test_the_verifier_runs_in_a_worker() -> None:
    spec = registry.parse_spec({"type": "math", "reference": "\\frac{1}{2}"})
    (verifier,) = registry.build([spec], VerifierResources())
    assert isinstance(verifier, Verifier)
    ctx = RequestContext(prompt="Half of one?")
    texts = ["\\boxed{\\frac12}", "0.5", "1/2", "\\boxed{0.25}"]
    verdicts = [await verifier.verify(ctx, Candidate(i, t)) for i, t in enumerate(texts)]
    assert [v.passed for v in verdicts] == [True, True, True, False]


def test_spec_needs_a_reference() -> None:
    with pytest.raises(registry.InvalidVerifierSpecError, match="reference"):
        registry.parse_spec({"type": "math"})
