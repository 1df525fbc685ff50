"""`vote`: self-consistency. A candidate's score is the share of candidates giving its answer.

Answers are extracted and normalised by :mod:`bestofk.verifiers.answers` (the same keys the ``vote``
selection policy clusters by): ``\\boxed{…}``, else the last number, else the stripped text, or
the spec's ``extract`` regex; numbers by value, expressions by sympy equality, text by case and
whitespace. So ``120``, ``120.0`` and ``The answer is 120`` are one answer.

A candidate passes when its answer is a plurality (no other answer is more common) shared by
more than one candidate: K distinct answers are no consensus. A lone candidate passes.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from typing import ClassVar, Literal

from pydantic import Field, field_validator

from bestofk.verifiers.answers import EXTRACT_TIMED_OUT, answer_key
from bestofk.verifiers.base import (
    Candidate,
    RequestContext,
    Verdict,
    VerifierCapacityError,
    VerifierResources,
    VerifierSpec,
    run_bounded,
)
from bestofk.verifiers.patterns import MAX_PATTERN_CHARS, compile_pattern


class VoteSpec(VerifierSpec):
    """``extract``: a regex whose first group (or whole match), at its last match, is the answer."""

    type: Literal["vote"] = "vote"
    extract: str | None = Field(default=None, max_length=MAX_PATTERN_CHARS)

    @field_validator("extract")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            compile_pattern(value)
        return value


class VoteVerifier:
    """Scores every candidate by how many others agree with its final answer."""

    Spec: ClassVar[type[VerifierSpec]] = VoteSpec

    def __init__(self, spec: VerifierSpec, resources: VerifierResources) -> None:
        assert isinstance(spec, VoteSpec)
        self.spec = spec
        self._workers = resources.workers

    async def verify_all(
        self, ctx: RequestContext, candidates: Sequence[Candidate]
    ) -> list[Verdict]:
        """Each answer inline when quick, else in a worker process (extraction, sympy)."""
        found = await asyncio.gather(
            *(
                run_bounded(self._workers, answer_key, c.text, self.spec.extract)
                for c in candidates
            ),
            return_exceptions=True,
        )
        keys: list[str | None] = []
        errors: list[str | None] = []
        for result in found:
            if isinstance(result, VerifierCapacityError) or not isinstance(result, str | Exception):
                raise result  # the request fails (503), or is cancelled
            keys.append(result if isinstance(result, str) else None)
            errors.append(_why(result) if isinstance(result, Exception) else None)
        counts = Counter(k for k in keys if k is not None)
        top = max(counts.values(), default=0)
        verdicts = []
        for key, error in zip(keys, errors, strict=True):
            if key is None:
                verdicts.append(Verdict.failure("vote", error or "no answer"))
                continue
            n = counts[key]
            consensus = n == top and (n > 1 or len(candidates) == 1)
            detail = f"answer {key[:60]!r}: {n}/{len(candidates)}"
            verdicts.append(Verdict("vote", n / len(candidates), consensus, detail))
        return verdicts


def _why(error: Exception) -> str:
    if isinstance(error, TimeoutError):
        return EXTRACT_TIMED_OUT
    return f"{type(error).__name__}: {error}"
