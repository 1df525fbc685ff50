"""`vote`: self-consistency. A candidate's score is the share of candidates giving its answer.

Answers are found and grouped by :mod:`bestofk.verifiers.answers` (the clusters the ``vote``
selection policy uses too): the spec's ``extract`` regex, else the last ``\\boxed{…}``, else what
math-verify extracts; mathematical answers are one when math-verify says they are equal, text by
case and whitespace. So ``120``, ``120.0`` and ``The answer is 120`` are one answer, and so are
``\\frac12``, ``0.5`` and ``1/2``.

A candidate passes when its answer is a plurality (no other answer is more common) shared by
more than one candidate: K distinct answers are no consensus. A lone candidate passes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import ClassVar, Literal

from pydantic import Field, field_validator

from bestofk.verifiers.answers import EXTRACT_TIMED_OUT, answer_keys
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
        """The answers' clusters inline when they are plain integers, else in a worker process
        (math-verify); a runaway ``extract`` or a check past its budget fails every verdict."""
        texts = [c.text for c in candidates]
        try:
            keys = await run_bounded(self._workers, answer_keys, texts, self.spec.extract)
        except VerifierCapacityError:
            raise  # the request fails (503)
        except Exception as exc:
            return [Verdict.failure("vote", _why(exc)) for _ in candidates]
        counts = Counter(keys)
        top = max(counts.values(), default=0)
        verdicts = []
        for key in keys:
            n = counts[key]
            consensus = n == top and (n > 1 or len(candidates) == 1)
            detail = f"answer {key[:60]!r}: {n}/{len(candidates)}"
            verdicts.append(Verdict("vote", n / len(candidates), consensus, detail))
        return verdicts


def _why(error: Exception) -> str:
    if isinstance(error, TimeoutError):
        return EXTRACT_TIMED_OUT
    return f"{type(error).__name__}: {error}"
