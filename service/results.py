"""A finished request as plain data: the one conversion from :class:`RerankResult`.

The output family is one set of fields, declared once by its models (``schemas/output.py``:
``RerankResponse``, ``CandidateOut``, ``VerdictOut``, ``Stats``, ``Usage``, ``TimingOut``).
:func:`as_data` gives exactly that shape, key for key, so the OpenAI and Anthropic routes embed
it as their ``bestofk`` block and the native route serializes it as its response, with
nothing to validate (``tests/test_records.py`` holds the data to the models). With
``record=True`` it adds what only a record keeps (a verdict's ``tokens``, a candidate's
``required_ok``, ``ready_ms``, ``verified_ms``, its ``vote`` ``answer`` and its whole
``output``): the fields the record's models (``records/format.py``) add to the family's,
validated into them once by ``format.build``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bestofk.service.rerank import RerankResult, Timing
    from bestofk.service.selection import Scored
    from bestofk.verifiers.base import ToolCall, Verdict


def _plain(value: Timing) -> dict[str, Any]:
    # The fields are plain values, so a shallow copy is the whole of it (dataclasses.asdict
    # deep-copies field by field).
    return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}


def verdict(v: Verdict, *, record: bool = False) -> dict[str, Any]:
    """A verdict as ``VerdictOut`` has it; ``record``: as ``VerdictRecord``, with the
    verifier's own ``tokens``."""
    out = {
        "verifier": v.verifier,
        "score": v.score,
        "passed": v.passed,
        "detail": v.detail,
        "latency_ms": v.latency_ms,
        "error": v.error,
    }
    if record:
        out["tokens"] = v.tokens
    return out


def candidate(scored: Scored, answer: str | None = None, *, record: bool = False) -> dict[str, Any]:
    """A scored candidate as ``CandidateOut`` has it: the candidate's fields, its combined
    score and verdicts; ``record``: as ``CandidateRecord``, also when it was ready and
    verified, its ``vote`` answer key (``answer``) and its whole output."""
    c = scored.candidate
    out = {
        "index": c.index,
        "text": c.text,
        "reasoning": c.reasoning,
        "reasoning_tokens": c.reasoning_tokens,
        "score": scored.score,
        "passed": scored.passed,
        "finish_reason": c.finish_reason,
        "tokens": c.tokens,
        "mean_logprob": c.mean_logprob,
        "tool_calls": openai_tool_calls(c.calls.calls) if c.calls is not None else None,
        "verdicts": [verdict(v, record=record) for v in scored.verdicts],
        "cut": c.cut,
        "confidence": scored.confidence,
    }
    if record:
        out["required_ok"] = scored.required_ok
        out["ready_ms"] = scored.ready_ms
        out["verified_ms"] = scored.verified_ms
        out["answer"] = answer
        out["output"] = c.output
    return out


def openai_tool_calls(calls: Sequence[ToolCall]) -> list[dict[str, Any]]:
    """Tool calls in OpenAI's shape (``message.tool_calls``)."""
    return [
        {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
        for c in calls
    ]


def as_data(
    result: RerankResult, *, candidates: bool = True, record: bool = False
) -> dict[str, Any]:
    """The result in the native response's shape (``RerankResponse``); ``candidates=False``
    leaves them out (None); ``record``: with what only a record keeps (:func:`candidate`)."""
    chosen = result.chosen
    return {
        "id": result.request_id,
        "model": result.model,
        "text": chosen.candidate.text,
        "reasoning": chosen.candidate.reasoning,
        "index": chosen.candidate.index,
        "score": chosen.score,
        "passed": chosen.passed,
        "candidates": [
            candidate(s, result.answers.get(s.candidate.index), record=record)
            for s in result.candidates
        ]
        if candidates
        else None,
        "stats": {
            "k": result.k,
            "k_requested": result.k_requested or result.k,
            "generated": result.generated,
            "passing": result.passing,
            "first_sample_passed": result.first_sample_passed,
            "early_exit": result.early_exit,
            "partial": result.partial,
            "waves": result.waves,
            "sampled": result.started,
            "stopped_by": result.stopped_by,
            "cut": result.cut,
            "confidence_threshold": result.threshold,
        },
        "usage": {
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
            "verifier_tokens": result.verifier_tokens,
            "reasoning_tokens": result.reasoning_tokens,
        },
        "timing": _plain(result.timing),
    }
