"""Self-consistency: the `vote` verifier, answer clusters (numbers, text, math-verify) and the vote
policy."""

from __future__ import annotations

import time

import pytest

from bestofk.tooling.procs import Server
from bestofk.verifiers import registry
from bestofk.verifiers.answers import answer_keys
from bestofk.verifiers.base import (
    Candidate,
    NotCheap,
    RequestContext,
    SetVerifier,
    Verdict,
    VerifierResources,
)
from tests.conftest import post

CTX = RequestContext(prompt="What's the factorial of 5?")


async def vote(texts: list[str], **spec: object) -> list[Verdict]:
    (verifier,) = registry.build(
        [registry.parse_spec({"type": "vote", **spec})], VerifierResources()
    )
    assert isinstance(verifier, SetVerifier)
    return await verifier.verify_all(CTX, [Candidate(i, t) for i, t in enumerate(texts)])


async def test_majority_across_formats() -> None:
    verdicts = await vote(["24", "120", "120.0", "The answer is 120", "720", "\\boxed{120}"])
    assert [v.score for v in verdicts] == pytest.approx([1 / 6, 4 / 6, 4 / 6, 4 / 6, 1 / 6, 4 / 6])
    assert [v.passed for v in verdicts] == [False, True, True, True, False, True]
    assert all(v.error is None for v in verdicts)
    assert "'120': 4/6" in verdicts[1].detail


async def test_no_consensus_when_every_answer_differs() -> None:
    verdicts = await vote(["1", "2", "3"])
    assert [v.passed for v in verdicts] == [False, False, False]
    assert [v.score for v in verdicts] == pytest.approx([1 / 3] * 3)
    (lone,) = await vote(["42"])
    assert lone.passed and lone.score == 1.0


async def test_custom_extract_pattern() -> None:
    texts = ["Answer: Paris (not Lyon)", "answer: paris", "Answer: Lyon", "I think Paris"]
    verdicts = await vote(texts, extract=r"(?i)answer:\s*(\w+)")
    # The last text has no match, so its stripped text is its answer.
    assert [v.score for v in verdicts] == pytest.approx([0.5, 0.5, 0.25, 0.25])


@pytest.mark.parametrize(
    ("left", "right"),
    [
        ("120", "120.0"),
        ("The answer is 120.", "120"),
        ("1,000", "1000"),
        ("\\boxed{1/2}", "\\boxed{0.5}"),
        ("\\boxed{\\frac{1}{2}}", "0.5"),
        ("\\boxed{\\frac12}", "1/2"),
        ("\\boxed{2x+1}", "\\boxed{1 + 2x}"),
        ("\\boxed{(x+1)^2}", "\\boxed{x^2 + 2x + 1}"),
        ("\\boxed{\\sqrt{8}}", "\\boxed{2\\sqrt{2}}"),
        ("\\boxed{50\\%}", "0.5"),
        ("Paris.", "  paris "),
        ("-0", "0"),
    ],
)  # fmt: skip
def test_equal_answers_share_a_key(left: str, right: str) -> None:
    keys = answer_keys([left, right])
    assert keys[0] == keys[1], keys


@pytest.mark.parametrize(
    ("left", "right"),
    [
        ("\\boxed{1/3}", "\\boxed{0.33}"),
        ("\\boxed{2x}", "\\boxed{2y}"),
        ("Paris", "Lyon"),
        ("24", "120"),
        # math-verify reads a date as its first number: dates stay text, so two dates of one
        # year are two answers.
        ("2024-05-13", "2024-06-12"),
    ],
)  # fmt: skip
def test_different_answers_do_not(left: str, right: str) -> None:
    keys = answer_keys([left, right])
    assert keys[0] != keys[1], keys


def test_latex_forms_are_one_cluster_in_order() -> None:
    texts = ["\\boxed{\\frac12}", "0.5", "The answer is 1/2", "\\boxed{\\frac{1}{3}}", "7"]
    keys = answer_keys(texts)
    assert keys[0] == keys[1] == keys[2] != keys[3] != keys[4]
    assert keys[0] == "\\frac12"  # named after its first member


def test_plain_integers_are_settled_inline_and_agree_with_math_verify() -> None:
    texts = ["120", "0120", "24", "-0", "0"]
    inline = answer_keys(texts, inline=True)
    worker = answer_keys(texts)
    assert inline == ["120", "120", "24", "0", "0"]
    assert [inline.index(k) for k in inline] == [worker.index(k) for k in worker]
    with pytest.raises(NotCheap):
        answer_keys(["1/2", "120"], inline=True)


@pytest.mark.parametrize(
    "hostile",
    [
        "\\boxed{9^{9^{9^{9}}}}",
        "9^9^9^9",
        "10^100000",
        "(a+b+c+d+e)^64",
        "__import__('os').system('true')",
        "x" * 500,
        "(" * 60 + "1" + ")" * 60,
    ],
)
async def test_hostile_answers_are_bounded_by_the_worker(hostile: str) -> None:
    # math-verify runs in a worker process, under its time budget (5 s) and memory cap: a
    # tower of powers is cut off there (an error verdict), never on the event loop.
    start = time.perf_counter()
    verdicts = await vote([hostile, "1", "1"])
    assert time.perf_counter() - start < 12.0
    assert len(verdicts) == 3
    assert all(v.error is not None for v in verdicts) or verdicts[1].passed


async def test_runaway_extract_pattern_is_an_error_verdict() -> None:
    start = time.perf_counter()
    verdicts = await vote(["a" * 40 + "!", "b"], extract="^(a|a)*$")
    assert time.perf_counter() - start < 5
    assert verdicts[0].error is not None and "timed out" in verdicts[0].error


def test_vote_policy_picks_the_majority_through_the_server(server: Server) -> None:
    candidates = ["24", "120.0", "720", "The answer is 120", "5040", "120"]
    response = post(
        server,
        "/verify",
        {
            "prompt": CTX.prompt,
            "candidates": candidates,
            "verifiers": [{"type": "vote"}],
            "selection": {"policy": "vote"},
        },
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(set(answer_keys([body["text"], "120"]))) == 1
    scores = [c["verdicts"][0]["score"] for c in body["candidates"]]
    assert scores == pytest.approx([1 / 6, 0.5, 1 / 6, 0.5, 1 / 6, 0.5])
    # argmax over the vote scores also lands in the majority.
    response = post(
        server,
        "/verify",
        {"prompt": CTX.prompt, "candidates": candidates, "verifiers": [{"type": "vote"}]},
    )
    assert len(set(answer_keys([response.json()["text"], "120"]))) == 1


def test_invalid_extract_pattern_is_a_400(server: Server) -> None:
    response = post(
        server,
        "/verify",
        {"prompt": "q", "candidates": ["a"], "verifiers": [{"type": "vote", "extract": "("}]},
    )
    assert response.status_code == 400
    assert "extract" in response.json()["error"]["message"]
