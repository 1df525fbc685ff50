"""`vote`: self-consistency. A candidate's score is the share of candidates giving its answer.

Answers are extracted and normalised by :mod:`verifiers.answers` (the same keys the ``vote``
selection policy clusters by): ``\\boxed{…}``, else the last number, else the stripped text, or
the spec's ``extract`` regex; numbers by value, expressions by sympy equality, text by case and
whitespace. So ``120``, ``120.0`` and ``The answer is 120`` are one answer.

A candidate passes when its answer is a plurality (no other answer is more common) shared by
more than one candidate: K distinct answers are no consensus. A lone candidate passes.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from typing import ClassVar, Literal

from pydantic import Field, field_validator

from verifiers.answers import answer_key
from verifiers.base import (
    Candidate,
    RequestContext,
    Verdict,
    VerifierResources,
    VerifierSpec,
    run_blocking,
)
from verifiers.regex import MAX_PATTERN_CHARS, compile_pattern


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

    async def verify_all(
        self, ctx: RequestContext, candidates: Sequence[Candidate]
    ) -> list[Verdict]:
        """Extraction and sympy run off the event loop."""
        start = time.perf_counter()
        verdicts = await run_blocking(self._vote, [c.text for c in candidates])
        elapsed = (time.perf_counter() - start) * 1000
        for verdict in verdicts:
            verdict.latency_ms = elapsed
        return verdicts

    def _vote(self, texts: list[str]) -> list[Verdict]:
        keys: list[str | None] = []
        errors: list[str | None] = []
        for text in texts:
            try:
                keys.append(answer_key(text, self.spec.extract))
                errors.append(None)
            except TimeoutError:
                keys.append(None)
                errors.append("the extract pattern timed out (runaway backtracking)")
        counts = Counter(k for k in keys if k is not None)
        top = max(counts.values(), default=0)
        verdicts = []
        for key, error in zip(keys, errors, strict=True):
            if key is None:
                verdicts.append(Verdict.failure("vote", error or "no answer"))
                continue
            n = counts[key]
            consensus = n == top and (n > 1 or len(texts) == 1)
            verdicts.append(
                Verdict("vote", n / len(texts), consensus, f"answer {key[:60]!r}: {n}/{len(texts)}")
            )
        return verdicts
