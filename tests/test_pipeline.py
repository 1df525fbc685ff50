"""Pipeline logic with a scripted engine: ordering, early exit, deadlines, set verifiers.

The real engines are exercised in test_generate.py; this pins down behaviour that depends on
timing, which a real model cannot script.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import ClassVar

import pytest

from bestofk.service.engines.base import (
    CandidateWatch,
    EngineHealth,
    Prompt,
    SamplingConfig,
)
from bestofk.service.errors import DeadlineExceededError
from bestofk.service.pipeline import Pipeline
from bestofk.service.rerank import RerankJob
from bestofk.verifiers.base import (
    Candidate,
    RequestContext,
    Verdict,
    VerifierResources,
    VerifierSpec,
)
from bestofk.verifiers.registry import parse_spec


class ScriptedStream:
    """Yields (delay, text) samples in order; records whether it was aborted."""

    def __init__(self, script: Sequence[tuple[float, str]], first_index: int = 0) -> None:
        self.script = script
        self.first_index = first_index
        self.watch: CandidateWatch | None = None
        self.prompt_tokens = 3
        self.completion_tokens = 0
        self.aborted = False
        self._gen = self._run()

    def __aiter__(self) -> AsyncIterator[Candidate]:
        return self._gen

    async def aclose(self) -> None:
        await self._gen.aclose()

    async def _run(self) -> AsyncGenerator[Candidate, None]:
        try:
            for index, (delay, text) in enumerate(self.script, start=self.first_index):
                await asyncio.sleep(delay)
                self.completion_tokens += len(text)
                yield Candidate(index, text, "stop", len(text), -1.0 if text else None)
        except GeneratorExit:
            self.aborted = True
            raise
        except asyncio.CancelledError:
            self.aborted = True
            raise


class ScriptedEngine:
    model_name = "scripted"
    health = EngineHealth("ready")

    def __init__(self, script: Sequence[tuple[float, str]]) -> None:
        self.script = script
        self.streams: list[ScriptedStream] = []

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    def sample(
        self,
        prompt: Prompt,
        k: int,
        sampling: SamplingConfig,
        request_id: str,
        first_index: int = 0,
        watch: CandidateWatch | None = None,
    ) -> ScriptedStream:
        stream = ScriptedStream(self.script[first_index : first_index + k], first_index)
        stream.watch = watch
        self.streams.append(stream)
        return stream


def job(k: int, specs: list[dict[str, object]], **kw: object) -> RerankJob:
    return RerankJob(
        request_id="t",
        prompt=Prompt(text="q"),
        k=k,
        sampling=SamplingConfig(),
        specs=[parse_spec(s) for s in specs],
        **kw,  # type: ignore[arg-type]
    )


EXACT = {"type": "exact", "reference": "120"}


async def test_candidates_verified_as_they_arrive() -> None:
    engine = ScriptedEngine([(0.0, "24"), (0.05, "120"), (0.05, "25")])
    result = await Pipeline(engine, VerifierResources()).run(job(3, [EXACT]))
    assert result.chosen.candidate.text == "120"
    assert [s.candidate.index for s in result.candidates] == [0, 1, 2]
    assert result.completion_tokens == 7 and result.prompt_tokens == 3
    assert not result.early_exit and not engine.streams[0].aborted


async def test_early_exit_aborts_the_rest() -> None:
    engine = ScriptedEngine([(0.0, "24"), (0.01, "120"), (1.0, "25"), (1.0, "26")])
    result = await Pipeline(engine, VerifierResources()).run(
        job(4, [EXACT], early_exit_min_score=1.0)
    )
    assert result.early_exit
    assert result.chosen.candidate.text == "120"
    assert len(result.candidates) == 2
    assert engine.streams[0].aborted
    assert result.timing.total_ms < 900


async def test_deadline_returns_best_so_far_flagged_partial() -> None:
    engine = ScriptedEngine([(0.0, "24"), (0.0, "120"), (5.0, "25")])
    result = await Pipeline(engine, VerifierResources()).run(job(3, [EXACT], timeout_s=0.3))
    assert result.partial
    assert result.chosen.candidate.text == "120"
    assert engine.streams[0].aborted


async def test_deadline_with_nothing_verified_is_504() -> None:
    engine = ScriptedEngine([(5.0, "24")])
    with pytest.raises(DeadlineExceededError):
        await Pipeline(engine, VerifierResources()).run(job(1, [EXACT], timeout_s=0.1))


class CountingSetVerifier:
    """Scores each candidate by how many others share its text."""

    Spec: ClassVar[type[VerifierSpec]] = VerifierSpec

    def __init__(self) -> None:
        self.spec = VerifierSpec(type="agree", weight=1.0)

    async def verify_all(
        self, ctx: RequestContext, candidates: Sequence[Candidate]
    ) -> list[Verdict]:
        texts = [c.text for c in candidates]
        return [
            Verdict("agree", texts.count(c.text) / len(texts), texts.count(c.text) > 1)
            for c in candidates
        ]


async def test_set_verifiers_run_once_all_are_in(monkeypatch: pytest.MonkeyPatch) -> None:
    from bestofk.verifiers import registry

    original = registry.build

    def build(specs, resources):  # type: ignore[no-untyped-def]
        return [*original(specs, resources), CountingSetVerifier()]

    monkeypatch.setattr(registry, "build", build)
    engine = ScriptedEngine([(0.0, "24"), (0.0, "24"), (0.0, "120")])
    result = await Pipeline(engine, VerifierResources()).run(job(3, [EXACT]))
    agree = [s.verdicts[1].score for s in result.candidates]
    assert agree == [2 / 3, 2 / 3, 1 / 3]
    # exact + agree, equal weights: "120" scores (1 + 1/3) / 2 and still wins.
    assert result.chosen.candidate.text == "120"
