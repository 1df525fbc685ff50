"""`math`: is the candidate's answer equal to the reference, by Hugging Face math-verify's rules?

The answer is the last ``\\boxed{…}`` of the candidate, else what math-verify extracts from it
(see :mod:`bestofk.verifiers.answers`); equal means math-verify's ``verify(reference, answer)``:
LaTeX and plain forms, fractions and decimals (``\\frac{1}{2}`` = ``0.5`` = ``1/2``),
percentages, sets, intervals, equations (``x = 2`` against ``2``), matrices, to six digits. It
is what TRL's accuracy reward and open-r1 use. Checks run in the verifier workers (math-verify's
timeouts are signals, main thread only), except two plain integers, compared inline.
"""

from __future__ import annotations

import re
from typing import ClassVar, Literal

from pydantic import Field

from bestofk.verifiers.answers import find_answer, is_math, parse_math, same_math
from bestofk.verifiers.base import (
    INLINE_MAX_CHARS,
    Candidate,
    NotCheap,
    RequestContext,
    Verdict,
    VerifierResources,
    VerifierSpec,
    run_bounded,
)

_INTEGER = re.compile(r"-?\d+")


class MathSpec(VerifierSpec):
    """``reference``: the right answer, LaTeX (with or without ``$``) or plain."""

    type: Literal["math"] = "math"
    reference: str = Field(min_length=1, max_length=1000)


def check_math(reference: str, text: str, *, inline: bool = False) -> Verdict:
    """The verdict for the answer in ``text`` (for :func:`~bestofk.verifiers.base.run_bounded`).
    ``inline``: only two plain integers; anything else is NotCheap."""
    if inline:
        answer = text.strip()
        if (
            len(answer) > INLINE_MAX_CHARS
            or _INTEGER.fullmatch(answer) is None
            or _INTEGER.fullmatch(reference.strip()) is None
        ):
            raise NotCheap
        return _verdict(int(reference) == int(answer), answer, reference)
    gold = parse_math(reference.strip()) if is_math(reference) else []
    if not gold:
        return Verdict.failure("math", f"math-verify cannot read the reference {reference!r}")
    answer, parsed = find_answer(text)
    if not parsed:
        return Verdict("math", 0.0, False, f"no mathematical answer in {text.strip()[-80:]!r}")
    return _verdict(same_math(gold, parsed), answer, reference)


def _verdict(same: bool, answer: str, reference: str) -> Verdict:
    if same:
        return Verdict("math", 1.0, True, f"answer {answer[:80]!r} equals {reference[:80]!r}")
    return Verdict("math", 0.0, False, f"got {answer[:80]!r}, expected {reference[:80]!r}")


class MathVerifier:
    """Score 1 when the candidate's final answer equals the reference, else 0."""

    Spec: ClassVar[type[VerifierSpec]] = MathSpec

    def __init__(self, spec: VerifierSpec, resources: VerifierResources) -> None:
        assert isinstance(spec, MathSpec)
        self.spec = spec
        self._workers = resources.workers

    async def verify(self, ctx: RequestContext, candidate: Candidate) -> Verdict:
        """Plain integers inline; anything else in a worker (math-verify)."""
        return await run_bounded(self._workers, check_math, self.spec.reference, candidate.text)
