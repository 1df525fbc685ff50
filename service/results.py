"""A finished request as plain data: the one conversion from :class:`RerankResult`.

The native response (``routes/common.render``) validates this into its pydantic models at the
HTTP edge; the record writer (``records/format.build``) loads it into the record's dataclasses.
Each dict holds every field either of them keeps, and each keeps the fields it declares: the
response leaves out a verdict's ``tokens`` and a candidate's ``required_ok``, ``ready_ms``,
``verified_ms`` and ``answer``, the record the stats' ``k_requested``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bestofk.service.pipeline import RerankResult, Timing
    from bestofk.service.selection import Scored
    from bestofk.verifiers.base import ToolCall, Verdict


def _plain(value: Verdict | Timing) -> dict[str, Any]:
    # The fields are plain values, so a shallow copy is the whole of it; dataclasses.asdict
    # deep-copies field by field, and ran K x verifiers times a request (a tenth of its CPU).
    return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}


def candidate(scored: Scored, answer: str | None = None) -> dict[str, Any]:
    """A scored candidate, flat: the candidate's fields, its combined score and verdicts, when
    it was ready and verified, and its ``vote`` answer key (``answer``)."""
    c = scored.candidate
    return {
        "index": c.index,
        "text": c.text,
        "reasoning": c.reasoning,
        "output": c.output,
        "reasoning_tokens": c.reasoning_tokens,
        "score": scored.score,
        "passed": scored.passed,
        "required_ok": scored.required_ok,
        "finish_reason": c.finish_reason,
        "tokens": c.tokens,
        "mean_logprob": c.mean_logprob,
        "tool_calls": openai_tool_calls(c.calls.calls) if c.calls is not None else None,
        "verdicts": [_plain(v) for v in scored.verdicts],
        "ready_ms": scored.ready_ms,
        "verified_ms": scored.verified_ms,
        "answer": answer,
        "cut": scored.cut,
        "confidence": scored.confidence,
    }


def openai_tool_calls(calls: Sequence[ToolCall]) -> list[dict[str, Any]]:
    """Tool calls in OpenAI's shape (``message.tool_calls``)."""
    return [
        {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
        for c in calls
    ]


def as_data(result: RerankResult, *, candidates: bool = True) -> dict[str, Any]:
    """The result in the native response's shape; ``candidates=False`` leaves them out (None)."""
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
            candidate(s, result.answers.get(s.candidate.index)) for s in result.candidates
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
