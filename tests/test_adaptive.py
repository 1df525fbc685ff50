"""Candidates as separate engine streams, adaptive K's waves, budgets, the candidate watch.

Against real vLLM (in-process and remote): seeded candidates are the same alone and in a burst,
early exit leaves nothing running in the engine, waves stop when a candidate passes, budgets
end the search. With a scripted engine: the wave logic that a real model cannot script.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from bestofk.service.adaptive import AdaptiveConfig, Budget, clear_majority
from bestofk.service.engines.base import Prompt, SamplingConfig
from bestofk.service.metrics import Metrics
from bestofk.service.pipeline import Pipeline
from bestofk.service.selection import SelectionConfig
from bestofk.service.settings import Settings
from bestofk.tooling.procs import Server
from bestofk.verifiers.base import TokenLogprob, VerifierResources
from tests.conftest import post
from tests.test_pipeline import EXACT, ScriptedEngine, job

PROMPT = "What's the factorial of 5? (Respond with a number only)"
ANYTHING = [{"type": "regex", "pattern": "(?s).*"}]
"""Every candidate passes: the first to finish settles the request."""
NOTHING = [{"type": "regex", "pattern": "^never$", "mode": "fullmatch", "required": True}]
"""No candidate passes: every wave runs."""


def generate(server: Server, **fields: Any) -> dict[str, Any]:
    body = {"prompt": PROMPT, "k": 8, "sampling": {"temperature": 1.0, "max_tokens": 24}}
    body.update(fields)
    reply = post(server, "/generate", body)
    assert reply.status_code == 200, reply.text
    data: dict[str, Any] = reply.json()
    return data


def texts(data: dict[str, Any]) -> dict[int, str]:
    return {c["index"]: c["text"] for c in data["candidates"]}


# --- real engines -----------------------------------------------------------------------------


def test_seeded_adaptive_candidates_same_alone_and_in_a_burst_of_32(any_server: Server) -> None:
    # Two waves of two (nothing passes), each candidate its own engine request seeded seed + i:
    # the batch it lands in (31 other requests, unseeded and seeded alike) must not change it.
    seeded = {
        "k": 4,
        "sampling": {"temperature": 1.0, "max_tokens": 16, "seed": 4321},
        "verifiers": NOTHING,
        "adaptive": {"first_wave": 2},
    }
    alone = generate(any_server, **seeded)
    assert alone["stats"]["waves"] == 2 and alone["stats"]["sampled"] == 4
    assert sorted(texts(alone)) == [0, 1, 2, 3]

    async def burst() -> list[dict[str, Any]]:
        async with httpx.AsyncClient(base_url=any_server.url, timeout=300) as client:
            bodies = [
                {"prompt": PROMPT, **seeded}
                if i % 2 == 0
                else {"prompt": PROMPT, "k": 4, "sampling": {"temperature": 1.0, "max_tokens": 16}}
                for i in range(32)
            ]
            replies = await asyncio.gather(*(client.post("/generate", json=b) for b in bodies))
        for reply in replies:
            assert reply.status_code == 200, reply.text
        return [r.json() for i, r in enumerate(replies) if i % 2 == 0]

    for data in asyncio.run(burst()):
        assert texts(data) == texts(alone)


def _unfinished(engine: Server) -> float:
    """Requests vLLM is running or holding waiting, from its own metrics."""
    total = 0.0
    for line in httpx.get(engine.url + "/metrics", timeout=10).text.splitlines():
        if line.startswith(("vllm:num_requests_running", "vllm:num_requests_waiting")):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.mark.parametrize("engine", ["local", "remote"])
def test_early_exit_aborts_every_unfinished_candidate(
    engine: str, request: pytest.FixtureRequest
) -> None:
    server: Server = request.getfixturevalue("server" if engine == "local" else "remote_server")
    # The in-process engine's vllm:* metrics are the server's; the remote one's, vLLM's own.
    vllm: Server = server if engine == "local" else request.getfixturevalue("vllm_backend")
    # A stop string ends candidates at different lengths; the first to finish passes, and
    # the rest are aborted: nothing of the request may stay in the engine.
    sampling = {"temperature": 1.0, "max_tokens": 200, "seed": 11, "stop": ["e"]}
    data = generate(server, sampling=sampling, verifiers=ANYTHING, early_exit={"min_score": 1.0})
    assert data["passed"] and data["stats"]["sampled"] == 8
    # The aborts reach the engine core asynchronously: wait for them, briefly.
    deadline = time.monotonic() + 30
    while (unfinished := _unfinished(vllm)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert unfinished == 0


def test_adaptive_stops_after_the_first_wave_that_passes(any_server: Server) -> None:
    data = generate(any_server, verifiers=ANYTHING, adaptive=True)
    stats = data["stats"]
    assert stats["waves"] == 1 and stats["sampled"] == 3 and stats["k"] == 8
    assert stats["stopped_by"] == "early_exit" and data["passed"]
    assert 1 <= stats["generated"] <= 3
    assert {c["index"] for c in data["candidates"]} <= {0, 1, 2}


def test_adaptive_samples_every_wave_while_nothing_passes(any_server: Server) -> None:
    data = generate(any_server, verifiers=NOTHING, adaptive={"first_wave": 2, "growth": 2.0})
    stats = data["stats"]
    # Waves of 2, 4, then the 2 left of K = 8.
    assert stats["waves"] == 3 and stats["sampled"] == 8 and stats["generated"] == 8
    assert stats["stopped_by"] == "k" and not data["passed"]
    assert sorted(texts(data)) == list(range(8))
    # usage counts every token of every wave.
    assert data["usage"]["completion_tokens"] == sum(c["tokens"] for c in data["candidates"])


def test_adaptive_through_the_openai_extra_body(any_server: Server) -> None:
    reply = post(
        any_server,
        "/v1/completions",
        {
            "model": "demo",
            "prompt": PROMPT,
            "max_tokens": 16,
            "best_of": 6,
            "verifiers": NOTHING,
            "adaptive": {"first_wave": 3},
            "budget": {"max_tokens": 100_000},
        },
    )
    assert reply.status_code == 200, reply.text
    stats = reply.json()["bestofk"]["stats"]
    assert stats["waves"] == 2 and stats["sampled"] == 6 and stats["stopped_by"] == "k"


def test_token_budget_ends_the_search_with_the_best_so_far(any_server: Server) -> None:
    sampling = {"temperature": 1.0, "max_tokens": 200, "stop": ["e"]}
    data = generate(any_server, sampling=sampling, verifiers=NOTHING, budget={"max_tokens": 1})
    stats = data["stats"]
    assert stats["stopped_by"] == "budget_tokens"
    assert stats["generated"] >= 1 and data["candidates"]
    assert data["index"] in texts(data)


def test_sampling_deadline_ends_the_search(any_server: Server) -> None:
    sampling = {"temperature": 1.0, "max_tokens": 200}
    data = generate(
        any_server,
        sampling=sampling,
        verifiers=NOTHING,
        adaptive={"first_wave": 1},
        budget={"deadline_s": 0.001},
    )
    stats = data["stats"]
    # The deadline passed before the first wave ended: that wave's candidate is the answer.
    assert stats["stopped_by"] == "budget_deadline" and stats["waves"] == 1
    assert stats["generated"] == 1


def test_bad_adaptive_fields_are_400(any_server: Server) -> None:
    body = {"prompt": PROMPT, "adaptive": {"first_wave": 0}}
    reply = post(any_server, "/generate", body)
    assert reply.status_code == 400 or reply.status_code == 422
    assert "first_wave" in reply.text
    reply = post(any_server, "/generate", {"prompt": PROMPT, "budget": {"tokens": 5}})
    assert reply.status_code in (400, 422) and "tokens" in reply.text


class CutSecond:
    """A trivial watch: cuts candidate 1 at its first delta, lets the rest run."""

    def __init__(self) -> None:
        self.seen: dict[int, int] = {}

    def delta(self, index: int, logprobs: Sequence[TokenLogprob]) -> bool:
        self.seen[index] = self.seen.get(index, 0) + len(logprobs)
        return index == 1


def test_watch_cuts_one_candidate_in_the_remote_engine(vllm_backend: Server) -> None:
    from bestofk.service.engines.openai_remote import OpenAIEngine

    async def run() -> list[Any]:
        engine = OpenAIEngine(Settings(backends=[vllm_backend.url]), Metrics())
        await engine.start()
        try:
            watch = CutSecond()
            # Long candidates (no stop), so candidate 1 has deltas before it ends.
            sampling = SamplingConfig(temperature=1.0, max_tokens=120, seed=5, min_tokens=100)
            stream = engine.sample(Prompt(text=PROMPT), 3, sampling, "watched", 0, watch)
            try:
                samples = [s async for s in stream]
            finally:
                await stream.aclose()
            assert watch.seen.get(0) and watch.seen.get(1)
            return samples
        finally:
            await engine.close()

    samples = {s.index: s for s in asyncio.run(run())}
    assert sorted(samples) == [0, 1, 2]
    assert samples[1].cut and samples[1].finish_reason == "abort"
    assert samples[1].tokens < 100
    assert not samples[0].cut and samples[0].finish_reason in ("stop", "length")


# --- the wave logic, scripted -----------------------------------------------------------------


def test_wave_sizes() -> None:
    assert AdaptiveConfig().waves(8) == [3, 3, 2]
    assert AdaptiveConfig(first_wave=2, growth=2.0).waves(16) == [2, 4, 8, 2]
    assert AdaptiveConfig(first_wave=3, growth=1.5).waves(10) == [3, 5, 2]
    assert AdaptiveConfig(first_wave=8).waves(4) == [4]
    assert AdaptiveConfig().waves(1) == [1]


def test_clear_majority_rule() -> None:
    rule = AdaptiveConfig()
    assert clear_majority(["120", "120", "120", "24"], rule)
    assert not clear_majority(["120", "120", "24", "25"], rule)
    assert not clear_majority(["120", "120"], rule)  # too few votes to be clear
    assert not clear_majority(["120", "120", "120", None, None], rule)  # 3 of 5 < 2/3
    assert clear_majority(["7"] * 6 + ["8", "9"], rule)


async def test_waves_stop_when_a_candidate_passes() -> None:
    script = [(0.0, "24"), (0.0, "25"), (0.0, "26"), (0.0, "120"), (0.0, "120"), (0.0, "1")]
    engine = ScriptedEngine(script)
    result = await Pipeline(engine, VerifierResources()).run(
        job(6, [EXACT], adaptive=AdaptiveConfig(first_wave=2))
    )
    assert result.chosen.candidate.text == "120" and result.chosen.candidate.index == 3
    assert result.waves == 2 and result.started == 4 and result.stopped_by == "early_exit"
    assert [len(s.script) for s in engine.streams] == [2, 2]
    assert [s.first_index for s in engine.streams] == [0, 2]
    assert result.completion_tokens == sum(len(t) for _, t in script[:4])


async def test_vote_waves_stop_on_a_clear_majority() -> None:
    script = [(0.0, "120")] * 3 + [(0.0, "24")] + [(0.0, "7")] * 4
    engine = ScriptedEngine(script)
    result = await Pipeline(engine, VerifierResources()).run(
        job(8, [], selection=SelectionConfig(policy="vote"), adaptive=AdaptiveConfig())
    )
    assert result.waves == 1 and result.stopped_by == "majority"
    assert result.chosen.candidate.text == "120"
    # Without one, every wave runs.
    engine = ScriptedEngine([(0.0, "120"), (0.0, "24")] * 4)
    result = await Pipeline(engine, VerifierResources()).run(
        job(8, [], selection=SelectionConfig(policy="vote"), adaptive=AdaptiveConfig())
    )
    assert result.waves == 3 and result.stopped_by == "k"


async def test_token_budget_stops_before_the_next_wave() -> None:
    engine = ScriptedEngine([(0.0, "24"), (0.0, "25"), (0.0, "26"), (0.0, "27")])
    result = await Pipeline(engine, VerifierResources()).run(
        job(4, [EXACT], adaptive=AdaptiveConfig(first_wave=2), budget=Budget(max_tokens=4))
    )
    assert result.waves == 1 and result.stopped_by == "budget_tokens"
    assert len(result.candidates) == 2


async def test_budget_deadline_aborts_the_wave_once_one_finished() -> None:
    engine = ScriptedEngine([(0.2, "24"), (5.0, "120")])
    result = await Pipeline(engine, VerifierResources()).run(
        job(2, [EXACT], budget=Budget(deadline_s=0.05))
    )
    # Past the deadline with nothing finished it waits for the first one, then stops.
    assert result.stopped_by == "budget_deadline" and engine.streams[0].aborted
    assert [s.candidate.text for s in result.candidates] == ["24"]
    assert result.timing.total_ms < 4000


@pytest.mark.parametrize("policy", ["argmax", "vote"])
async def test_watch_is_passed_to_every_wave(policy: str) -> None:
    engine = ScriptedEngine([(0.0, "24")] * 4)
    watch = CutSecond()
    await Pipeline(engine, VerifierResources()).run(
        job(
            4,
            [EXACT],
            selection=SelectionConfig(policy=policy),  # type: ignore[arg-type]
            adaptive=AdaptiveConfig(first_wave=2),
            watch=watch,
        )
    )
    assert [s.watch for s in engine.streams] == [watch, watch]


def test_eval_adaptive_measures_every_configuration(server: Server) -> None:
    from bestofk.tooling import compute
    from bestofk.tooling.evaluation import load_tasks

    tasks = load_tasks(Path(__file__).parent.parent / "demo" / "tasks.jsonl", ["factorial"])[:4]
    plan = compute.configs([1, 2, 8])

    async def run() -> compute.ComputeReport:
        async with httpx.AsyncClient(base_url=server.url) as client:
            sampling = {"temperature": 1.0, "max_tokens": 16, "seed": 0}
            return await compute.measure(client, tasks, plan, sampling)

    report = asyncio.run(run())
    rows = {r.name: r for r in report.rows}
    assert list(rows) == ["K=1", "K=2", "K=8", "K=8 early exit", "adaptive (K<=8)"]
    assert report.tasks == 4
    assert rows["K=1"].sampled == 1 and rows["K=8"].sampled == 8
    assert 1 <= rows["adaptive (K<=8)"].sampled <= 8 and rows["adaptive (K<=8)"].waves >= 1
    # The in-process server's engine counts what usage misses of aborted candidates.
    for row in report.rows:
        assert row.tokens >= row.usage_tokens > 0
    assert "| adaptive (K<=8) |" in report.markdown("K=8 early exit")


def test_watch_cuts_one_candidate_in_the_in_process_engine(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    from bestofk.tooling.procs import engine_env
    from tests.conftest import model_path

    script = Path(__file__).parent / "data" / "watch_local.py"
    done = subprocess.run(
        [sys.executable, str(script), model_path()],
        env=engine_env(VLLM_LOGGING_LEVEL="ERROR"),
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(x) for x in done.stdout.splitlines() if x.startswith("{")]
    samples = {x["index"]: x for x in lines if "index" in x}
    assert sorted(samples) == [4, 5, 6]
    assert samples[5]["cut"] and samples[5]["finish"] == "abort" and samples[5]["tokens"] < 100
    assert not samples[4]["cut"] and samples[4]["finish"] in ("stop", "length")
    assert lines[-1] == {"unfinished": 0}


def test_later_waves_go_to_the_first_waves_backend() -> None:
    from bestofk.service.engines.backends import BackendPool

    pool = BackendPool(Settings(backends=["http://a", "http://b"]), Metrics())
    for backend in pool.backends:
        backend.healthy = True
    first = pool.pick("req", continuing=False)
    first.in_flight += 5  # busier now than the other
    assert pool.pick("req", continuing=True) is first
    assert pool.pick("other") is not first  # a new request still goes to the least busy
    first.healthy = False  # gone: the next wave goes where it can
    assert pool.pick("req", continuing=True) is not first
