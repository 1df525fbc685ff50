"""`exact`: is the candidate exactly the reference answer (numbers compared as numbers)?"""

from __future__ import annotations

from typing import ClassVar, Literal

from bestofk.verifiers.base import (
    Candidate,
    RequestContext,
    Verdict,
    VerifierResources,
    VerifierSpec,
)
from bestofk.verifiers.numbers import as_number


class ExactSpec(VerifierSpec):
    """``reference`` answer; ``numeric`` compares as numbers when both sides parse (120 = 120.0)."""

    type: Literal["exact"] = "exact"
    reference: str
    numeric: bool = True


class ExactVerifier:
    """Score 1 when the stripped candidate equals the reference, else 0.

    Formatting is part of the answer: "The answer is 120." is not "120". That is the point of
    this verifier; use ``vote`` to compare extracted answers instead.
    """

    Spec: ClassVar[type[VerifierSpec]] = ExactSpec

    def __init__(self, spec: VerifierSpec, resources: VerifierResources) -> None:
        assert isinstance(spec, ExactSpec)
        self.spec = spec
        self._reference = spec.reference.strip()
        self._reference_number = as_number(self._reference) if spec.numeric else None

    async def verify(self, ctx: RequestContext, candidate: Candidate) -> Verdict:
        """Compare text, or numbers when both sides are numbers."""
        text = candidate.text.strip()
        if self._reference_number is not None and (number := as_number(text)) is not None:
            same = number == self._reference_number
        else:
            same = text == self._reference
        detail = "equals reference" if same else f"got {text[:80]!r}, expected {self._reference!r}"
        return Verdict("exact", float(same), same, detail)
