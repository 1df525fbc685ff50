"""Self-consistency: the `vote` verifier, answer keys (numbers, text, sympy) and the vote policy."""

from __future__ import annotations

import time

import pytest

from bestofk.tooling.procs import Server
from bestofk.verifiers import registry
from bestofk.verifiers.answers import answer_key
from bestofk.verifiers.base import (
    Candidate,
    RequestContext,
    SetVerifier,
    Verdict,
    VerifierResources,
)
from bestofk.verifiers.symbolic import canonical
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
        ("\\boxed{2x+1}", "\\boxed{1 + 2*x}"),
        ("\\boxed{(x+1)^2}", "\\boxed{x^2 + 2x + 1}"),
        ("\\boxed{\\sqrt{8}}", "\\boxed{2\\sqrt{2}}"),
        ("Paris.", "  paris "),
        ("-0", "0.00"),
    ],
)  # fmt: skip
def test_equal_answers_share_a_key(left: str, right: str) -> None:
    assert answer_key(left) == answer_key(right)


@pytest.mark.parametrize(
    ("left", "right"),
    [("\\boxed{1/3}", "\\boxed{0.333}"), ("\\boxed{2x}", "\\boxed{2y}"), ("Paris", "Lyon")],
)
def test_different_answers_do_not(left: str, right: str) -> None:
    assert answer_key(left) != answer_key(right)


@pytest.mark.parametrize(
    "hostile",
    [
        "9^9^9^9",
        "2^64^64",
        "((2^64)^64)^64",
        "10^100000",
        "(a+b+c+d+e)^64",
        "__import__('os').system('true')",
        "x" * 500,
        "(" * 60 + "1" + ")" * 60,
    ],
)
def test_hostile_expressions_are_refused_fast(hostile: str) -> None:
    start = time.perf_counter()
    key = canonical(hostile)
    assert time.perf_counter() - start < 2.0
    assert key is None or len(key) <= 200


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
    assert answer_key(body["text"]) == "120"
    scores = [c["verdicts"][0]["score"] for c in body["candidates"]]
    assert scores == pytest.approx([1 / 6, 0.5, 1 / 6, 0.5, 1 / 6, 0.5])
    # argmax over the vote scores also lands in the majority.
    response = post(
        server,
        "/verify",
        {"prompt": CTX.prompt, "candidates": candidates, "verifiers": [{"type": "vote"}]},
    )
    assert answer_key(response.json()["text"]) == "120"


def test_invalid_extract_pattern_is_a_400(server: Server) -> None:
    response = post(
        server,
        "/verify",
        {"prompt": "q", "candidates": ["a"], "verifiers": [{"type": "vote", "extract": "("}]},
    )
    assert response.status_code == 400
    assert "extract" in response.json()["error"]["message"]
