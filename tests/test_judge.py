"""The LLM judge: reading scores from logprobs, batching, failures, and end to end on vLLM.

The unit tests drive the judge through a scripted :class:`Completer` (the seam the judge model
sits behind); everything else runs against the real engines: the in-process vLLM serving the
demo model (whose judge template is the default one), a remote vLLM behind bestofk, and that
vLLM server named as the judge's ``endpoint``.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx
import pytest

from bestofk.tooling.procs import ROOT, Server
from bestofk.verifiers import openai_http, registry
from bestofk.verifiers.base import (
    Candidate,
    Completer,
    Completion,
    RequestContext,
    SetVerifier,
    TargetNotAllowedError,
    Verdict,
    Verifier,
    VerifierResources,
)
from bestofk.verifiers.endpoint import EndpointCompleter
from tests.conftest import model_path, post

CTX = RequestContext(prompt="What's the factorial of 5? (Respond with a number only)")
TASKS = ROOT / "demo" / "tasks.jsonl"
DEMO_MODEL = ROOT / "demo" / "model"
MIN_PAIR_ACCURACY = 0.8


class Scripted:
    """A judge model that answers each prompt with ``answer(prompt)``, recording every call."""

    def __init__(self, answer: Callable[[str], Completion], delay_s: float = 0.0) -> None:
        self.answer = answer
        self.delay_s = delay_s
        self.calls: list[list[str]] = []

    async def complete(
        self, prompts: Sequence[str], max_tokens: int, top_logprobs: int, request_id: str
    ) -> list[Completion]:
        self.calls.append(list(prompts))
        await asyncio.sleep(self.delay_s)
        return [self.answer(p) for p in prompts]


def yes_no(p_yes: float, p_no: float, text: str = " yes") -> Completion:
    return Completion(text, 3, [{" yes": math.log(p_yes), " no": math.log(p_no)}])


def likes_120(prompt: str) -> Completion:
    return yes_no(0.9, 0.1) if "Answer: 120\n" in prompt else yes_no(0.2, 0.6, " no")


def build(spec: dict[str, object], model: Completer | None) -> Verifier | SetVerifier:
    resources = VerifierResources(completer=model)
    (verifier,) = registry.build([registry.parse_spec({"type": "judge", **spec})], resources)
    return verifier


async def judge_each(texts: Sequence[str], model: Scripted | None, **spec: object) -> list[Verdict]:
    verifier = build(spec, model)
    assert isinstance(verifier, Verifier)
    return list(
        await asyncio.gather(*(verifier.verify(CTX, Candidate(i, t)) for i, t in enumerate(texts)))
    )


async def test_score_is_yes_mass_normalised_and_calls_are_one_batch() -> None:
    model = Scripted(likes_120)
    verdicts = await judge_each(["120", "24", "720"], model)
    assert len(model.calls) == 1 and len(model.calls[0]) == 3
    assert model.calls[0][0] == (
        "Question: What's the factorial of 5? (Respond with a number only)\n"
        "Answer: 120\nIs the answer correct? (yes/no):"
    )
    assert [v.score for v in verdicts] == pytest.approx([0.9, 0.25, 0.25])
    assert [v.passed for v in verdicts] == [True, False, False]
    assert all(v.tokens == 3 and v.error is None for v in verdicts)
    assert "batch of 3" in verdicts[0].detail


async def test_late_arrivals_form_their_own_batch() -> None:
    model = Scripted(likes_120)
    verifier = build({}, model)
    assert isinstance(verifier, Verifier)
    first = await verifier.verify(CTX, Candidate(0, "120"))
    second = await verifier.verify(CTX, Candidate(1, "24"))
    assert [len(c) for c in model.calls] == [1, 1]
    assert first.score > second.score


async def test_text_is_read_when_logprobs_miss_the_labels() -> None:
    model = Scripted(lambda p: Completion(" Yes, it is.", 4, [{" Yes": -0.1}, {",": -0.1}]))
    (verdict,) = await judge_each(["120"], model)
    assert verdict.score == 1.0  # " Yes" counts as the label in any case
    model = Scripted(lambda p: Completion("\nNo.", 2, [{"\n": -0.01}]))
    (verdict,) = await judge_each(["24"], model)
    assert verdict.score == 0.0 and "text" in verdict.detail


async def test_unreadable_answer_is_an_error_verdict() -> None:
    model = Scripted(lambda p: Completion(" maybe later", 2, [{" maybe": -0.1}]))
    (verdict,) = await judge_each(["120"], model)
    assert verdict.score == 0.0 and not verdict.passed
    assert verdict.error is not None and "unreadable judge answer" in verdict.error


async def test_timeout_is_an_error_verdict() -> None:
    model = Scripted(likes_120, delay_s=5.0)
    verdicts = await judge_each(["120", "24"], model, timeout_s=0.05)
    for verdict in verdicts:
        assert verdict.error is not None and "did not answer within 0.05s" in verdict.error


async def test_a_batch_nobody_waits_for_is_cancelled() -> None:
    """A request deadline cancels the verify calls; the judge call behind them stops too."""
    started, cancelled = asyncio.Event(), asyncio.Event()

    class Hanging:
        async def complete(
            self, prompts: Sequence[str], max_tokens: int, top_logprobs: int, request_id: str
        ) -> list[Completion]:
            started.set()
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                cancelled.set()
                raise
            return []

    verifier = build({}, Hanging())
    assert isinstance(verifier, Verifier)
    tasks = [asyncio.create_task(verifier.verify(CTX, Candidate(i, "120"))) for i in range(3)]
    await asyncio.wait_for(started.wait(), 2)
    for task in tasks:
        task.cancel()
    await asyncio.wait_for(cancelled.wait(), 2)


async def test_without_a_judge_model_every_verdict_says_why() -> None:
    (verdict,) = await judge_each(["120"], None)
    assert verdict.error is not None and "no judge model" in verdict.error


async def test_scale_is_the_expected_rating() -> None:
    model = Scripted(lambda p: Completion(" 8", 1, [{" 8": math.log(0.5), " 10": math.log(0.5)}]))
    (verdict,) = await judge_each(["120"], model, scale="1-10")
    assert verdict.score == pytest.approx((9 - 1) / 9)
    assert "Rate the answer from 1 (wrong) to 10 (perfect)" in model.calls[0][0]


async def test_rubric_and_reference_are_shown_to_the_judge() -> None:
    model = Scripted(likes_120)
    await judge_each(["120"], model, rubric="Numbers only.", reference="120")
    prompt = model.calls[0][0]
    assert prompt.startswith("Numbers only.\nReference answer: 120\nQuestion: ")
    model = Scripted(likes_120)
    template = "Q: {prompt}\nExpected: {reference}\nGot: {candidate}\nOK?"
    await judge_each(["120"], model, reference="120", template=template)
    assert model.calls[0][0].endswith("Expected: 120\nGot: 120\nOK?")


@pytest.mark.parametrize(
    "spec",
    [
        {"template": "{prompt.__class__}"},
        {"template": "{candidate:>99999999}"},
        {"template": "{candidates}"},  # listwise field in pointwise mode
        {"model": "demo"},  # a model without an endpoint
        {"endpoint": "file:///etc/passwd"},
    ],
)
def test_bad_specs_are_refused(spec: dict[str, object]) -> None:
    with pytest.raises(registry.InvalidVerifierSpecError):
        registry.parse_spec({"type": "judge", **spec})


def test_endpoint_outside_the_allowlist_is_refused_when_built() -> None:
    """Refused before anything is generated (the pipeline turns it into a 400)."""
    resources = VerifierResources(allowed_models=frozenset({"http://judge:8000"}))
    spec = registry.parse_spec({"type": "judge", "endpoint": "http://169.254.169.254/v1"})
    with pytest.raises(TargetNotAllowedError, match="not among the targets"):
        registry.build([spec], resources)


async def test_listwise_maps_the_choice_back_through_the_shuffle() -> None:
    texts = ["24", "720", "120", "6"]

    def pick_120(prompt: str) -> Completion:
        # The judge picks whichever position the shuffle gave "120".
        shown = [line.split(": ", 1)[1] for line in prompt.splitlines() if line[:7] == "Answer "]
        position = shown.index("120") + 1
        other = 1 if position != 1 else 2
        top = {f" {position}": math.log(0.75), f" {other}": math.log(0.25)}
        return Completion(f" {position}", 1, [top])

    model = Scripted(pick_120)
    verifier = build({"mode": "listwise"}, model)
    assert isinstance(verifier, SetVerifier) and not isinstance(verifier, Verifier)
    candidates = [Candidate(i, t) for i, t in enumerate(texts)]
    verdicts = await verifier.verify_all(CTX, candidates)
    assert [v.passed for v in verdicts] == [False, False, True, False]
    assert verdicts[2].score == 1.0
    assert sorted(v.score for v in verdicts) == pytest.approx([0, 0, 1 / 3, 1])
    assert sum(v.tokens for v in verdicts) == 1  # one call, counted once
    shown = [line for line in model.calls[0][0].splitlines() if line.startswith("Answer ")]
    assert [s.split(": ")[1] for s in shown] != texts  # shuffled (this seed moves them)
    again = await build({"mode": "listwise"}, model).verify_all(CTX, candidates)  # type: ignore[union-attr]
    assert model.calls[1] == model.calls[0]  # seeded: the same order every time
    assert [v.score for v in again] == [v.score for v in verdicts]


# --- end to end ------------------------------------------------------------------------------


def factorial_pairs() -> list[tuple[str, str, str]]:
    """(prompt, right, wrong) for each factorial task: near misses as the demo measures them."""
    pairs = []
    for line in TASKS.read_text().splitlines():
        task = json.loads(line)
        if task["family"] != "factorial":
            continue
        n = int(task["id"].split("-")[1])
        right = task["verifiers"][0]["reference"]
        wrong = {str(math.factorial(n - 1)) if n else "0", str(int(right) + 1)}
        wrong |= {str(int(right) - 1), str(math.factorial(n + 1))}
        pairs += [(task["prompt"], right, w) for w in sorted(wrong - {right})]
    return pairs


async def _judge_pairs(
    server: Server, pairs: list[tuple[str, str, str]]
) -> list[dict[str, object]]:
    async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
        gate = asyncio.Semaphore(8)

        async def one(prompt: str, right: str, wrong: str) -> dict[str, object]:
            body = {
                "prompt": prompt,
                "candidates": [right, wrong],
                "verifiers": [{"type": "judge"}],
            }
            async with gate:
                response = await client.post("/verify", json=body)
            assert response.status_code == 200, response.text
            result: dict[str, object] = response.json()
            return result

        return list(await asyncio.gather(*(one(*pair) for pair in pairs)))


def test_judge_prefers_right_factorials_end_to_end(server: Server) -> None:
    if Path(model_path()).resolve() != DEMO_MODEL.resolve():
        pytest.fail(
            f"the judge accuracy check needs the demo model at {DEMO_MODEL} (its judge template "
            "is the default one); unset BESTOFK_TEST_MODEL or build it: .venv/bin/python "
            "demo/train.py"
        )
    pairs = factorial_pairs()
    assert len(pairs) >= 40
    results = asyncio.run(_judge_pairs(server, pairs))
    wins = 0
    for result in results:
        right, wrong = (c["verdicts"][0] for c in result["candidates"])  # type: ignore[attr-defined]
        assert right["error"] is None and wrong["error"] is None, (right, wrong)
        assert "batch of 2" in right["detail"]
        wins += right["score"] > wrong["score"]
        assert result["usage"]["verifier_tokens"] > 0  # type: ignore[index]
    accuracy = wins / len(pairs)
    print(f"judge pair accuracy (factorial): {wins}/{len(pairs)} = {accuracy:.3f}")
    assert accuracy >= MIN_PAIR_ACCURACY, f"right answer scored higher in only {accuracy:.0%}"


def _judge_request(**spec: object) -> dict[str, object]:
    return {
        "prompt": CTX.prompt,
        "candidates": ["120", "24", "The answer is 120", "720"],
        "verifiers": [{"type": "judge", **spec}],
    }


def assert_judged(body: dict[str, object], batch: int) -> None:
    candidates = body["candidates"]
    assert isinstance(candidates, list) and len(candidates) == 4
    for c in candidates:
        (verdict,) = c["verdicts"]
        assert verdict["verifier"] == "judge" and verdict["error"] is None, verdict
        assert 0.0 <= verdict["score"] <= 1.0
        assert f"batch of {batch}" in verdict["detail"]
    tokens = body["usage"]["verifier_tokens"]  # type: ignore[index]
    assert tokens >= 4, "each judge call generates at least one token"


def test_judge_with_the_remote_engine(remote_server: Server) -> None:
    response = post(remote_server, "/verify", _judge_request())
    assert response.status_code == 200, response.text
    assert_judged(response.json(), batch=4)


def test_judge_at_an_openai_endpoint(server: Server, vllm_backend: Server) -> None:
    response = post(server, "/verify", _judge_request(endpoint=vllm_backend.url + "/v1"))
    assert response.status_code == 200, response.text
    assert_judged(response.json(), batch=4)
    same_model = post(server, "/verify", _judge_request())
    by_engine = [c["verdicts"][0]["score"] for c in same_model.json()["candidates"]]
    by_endpoint = [c["verdicts"][0]["score"] for c in response.json()["candidates"]]
    # The same weights behind both: the same judgement, up to CPU float noise.
    assert by_endpoint == pytest.approx(by_engine, abs=0.02)


async def test_the_endpoint_model_is_listed_once_and_again_when_it_is_gone(
    vllm_backend: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without 'model', the endpoint's model is asked for (GET /v1/models) on the first call
    only; a kept name the server no longer knows (it restarted with another model: 404) is
    asked for again, and the call made once more."""
    listed: list[str] = []
    get_json = openai_http.get_json

    async def counting(http: openai_http.PooledClient, url: str, timeout_s: float) -> object:
        listed.append(url)
        return await get_json(http, url, timeout_s)

    monkeypatch.setattr(openai_http, "get_json", counting)
    http = openai_http.PooledClient()
    judge = EndpointCompleter(vllm_backend.url + "/v1", None, 60, http)
    try:
        for i in range(3):
            (answer,) = await judge.complete(["Is 120 the factorial of 5?"], 2, 2, f"r{i}")
        assert len(listed) == 1
        served = http.models[vllm_backend.url]
        http.models[vllm_backend.url] = "the-model-before-a-restart"
        (again,) = await judge.complete(["Is 120 the factorial of 5?"], 2, 2, "r3")
    finally:
        await http.aclose()
    assert len(listed) == 2 and http.models[vllm_backend.url] == served
    assert again.text == answer.text  # greedy: the same model, the same answer


def test_judge_during_generation_counts_its_tokens(server: Server) -> None:
    body = {
        "prompt": CTX.prompt,
        "k": 4,
        "sampling": {"max_tokens": 8},
        "verifiers": [{"type": "judge"}],
    }
    response = post(server, "/generate", body)
    assert response.status_code == 200, response.text
    result = response.json()
    verdicts = [c["verdicts"][0] for c in result["candidates"]]
    assert len(verdicts) == 4 and all(v["error"] is None for v in verdicts), verdicts
    assert result["usage"]["verifier_tokens"] >= 4


def test_judge_failures_never_fail_the_request(server: Server) -> None:
    response = post(server, "/verify", _judge_request(timeout_s=0.001))
    assert response.status_code == 200, response.text
    for c in response.json()["candidates"]:
        assert "did not answer within 0.001s" in c["verdicts"][0]["error"]
    unreachable = _judge_request(endpoint="http://127.0.0.1:9/v1", timeout_s=5)
    response = post(server, "/verify", unreachable)
    assert response.status_code == 200, response.text
    assert "unreachable" in response.json()["candidates"][0]["verdicts"][0]["error"]


def test_listwise_judge_end_to_end(server: Server) -> None:
    response = post(server, "/verify", _judge_request(mode="listwise"))
    assert response.status_code == 200, response.text
    verdicts = [c["verdicts"][0] for c in response.json()["candidates"]]
    errors = {v["error"] for v in verdicts}
    if errors == {None}:
        # The judge read: exactly its favourite passes, scored 1.
        assert sum(v["passed"] for v in verdicts) == 1
        assert max(v["score"] for v in verdicts) == 1.0
    else:
        # The demo model is not trained on the listwise prompt; if it says no number, every
        # verdict carries the same reason and the request still succeeds.
        (error,) = errors
        assert error is not None and error.startswith("unreadable judge answer")
    assert response.json()["usage"]["verifier_tokens"] >= 1
