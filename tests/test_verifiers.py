"""The cheap built-in verifiers and the registry."""

from __future__ import annotations

import time

import pytest

from bestofk.verifiers import registry
from bestofk.verifiers.base import Candidate, RequestContext, Verdict, VerifierResources

CTX = RequestContext(prompt="q")
NEEDS_A = {"type": "object", "required": ["a"]}


async def run(spec: dict[str, object], text: str) -> Verdict:
    verifier = registry.build([registry.parse_spec(spec)], VerifierResources())[0]
    verdict: Verdict = await verifier.verify(CTX, Candidate(0, text))  # type: ignore[union-attr]
    return verdict


@pytest.mark.parametrize(
    ("spec", "text", "passed"),
    [
        ({"type": "regex", "pattern": r"^\d+$"}, " 120\n", True),
        ({"type": "regex", "pattern": r"\d+"}, "The answer is 120.", True),
        ({"type": "regex", "pattern": r"\d+", "mode": "fullmatch"}, "The answer is 120.", False),
        ({"type": "exact", "reference": "120"}, "120", True),
        ({"type": "exact", "reference": "120"}, "120.0", True),
        ({"type": "exact", "reference": "120"}, "1.2e2", True),
        ({"type": "exact", "reference": "120"}, "The answer is 120.", False),
        ({"type": "exact", "reference": "120", "numeric": False}, "120.0", False),
        ({"type": "exact", "reference": "2025-08-18", "numeric": False}, "2025-08-18", True),
        ({"type": "json_schema", "schema": NEEDS_A}, '{"a": 1}', True),
        ({"type": "json_schema", "schema": NEEDS_A}, '{"b": 1}', False),
        ({"type": "json_schema", "schema": {"type": "object"}}, '```json\n{"a": 1}\n```', True),
        ({"type": "json_schema", "schema": {"type": "object"}}, "not json", False),
        ({"type": "style", "max_sentences": 2, "no_emoji": True}, "One. Two.", True),
        ({"type": "style", "max_sentences": 2}, "One. Two. Three.", False),
        ({"type": "style", "no_emoji": True}, "Great news 🎉", False),
        ({"type": "style", "max_chars": 5}, "too long", False),
        ({"type": "style", "forbid": ["(?i)as an ai"]}, "As an AI, I think so.", False),
    ],
)  # fmt: skip
async def test_verdicts(spec: dict[str, object], text: str, passed: bool) -> None:
    verdict = await run(spec, text)
    assert verdict.passed is passed, verdict
    assert verdict.score == (1.0 if passed else verdict.score)
    assert verdict.error is None


async def test_style_score_is_share_of_constraints_met() -> None:
    verdict = await run({"type": "style", "max_sentences": 1, "no_emoji": True}, "A. B.")
    assert verdict.score == 0.5 and "2 sentences" in verdict.detail


async def test_runaway_regex_is_an_error_verdict_not_a_hang() -> None:
    start = time.perf_counter()
    verdict = await run({"type": "regex", "pattern": "^(a|a)*$"}, "a" * 60 + "!")
    assert time.perf_counter() - start < 5
    assert verdict.error is not None and "timed out" in verdict.error
    assert verdict.score == 0.0 and not verdict.passed


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ({"type": "regex", "pattern": "(["}, "pattern"),
        ({"type": "regex"}, "pattern"),
        ({"type": "regex", "pattern": "a", "mode": "other"}, "mode"),
        ({"type": "exact", "reference": "1", "weight": -1}, "weight"),
        ({"type": "json_schema", "schema": {"type": "nonsense"}}, "schema"),
        ({"type": "style", "max_sentences": 0}, "max_sentences"),
        ({"type": "unknown-kind"}, "known types"),
        ({"weight": 1}, "type"),
    ],
)
def test_invalid_specs_name_the_field(spec: dict[str, object], needle: str) -> None:
    with pytest.raises(registry.InvalidVerifierSpecError) as info:
        registry.parse_spec(spec, ("verifiers", 0))
    assert needle in str(info.value)


def test_builtins_are_registered() -> None:
    assert {"regex", "exact", "json_schema", "style"} <= set(registry.available())
