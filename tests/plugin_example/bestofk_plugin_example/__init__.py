"""An example bestofk verifier plugin, registered through the ``bestofk.verifiers`` entry point.

A plugin verifier is a class with a ``Spec`` (a ``VerifierSpec`` subclass whose ``type`` is the
entry point's name), a constructor ``(spec, resources)``, and ``async verify(ctx, candidate)``
(pointwise) or ``async verify_all(ctx, candidates)`` (set-level).
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from bestofk.verifiers.base import (
    Candidate,
    RequestContext,
    Verdict,
    VerifierResources,
    VerifierSpec,
)


class KeywordsSpec(VerifierSpec):
    """``words`` the candidate should use (case-insensitive)."""

    type: Literal["keywords"] = "keywords"
    words: list[str] = Field(min_length=1, max_length=64)


class KeywordsVerifier:
    """Score = share of ``words`` found in the candidate; passes when all are."""

    Spec: ClassVar[type[VerifierSpec]] = KeywordsSpec

    def __init__(self, spec: VerifierSpec, resources: VerifierResources) -> None:
        assert isinstance(spec, KeywordsSpec)
        self.spec = spec

    async def verify(self, ctx: RequestContext, candidate: Candidate) -> Verdict:
        """Count the words present."""
        text = candidate.text.casefold()
        found = [w for w in self.spec.words if w.casefold() in text]
        score = len(found) / len(self.spec.words)
        return Verdict("keywords", score, score == 1.0, f"found {found}")
