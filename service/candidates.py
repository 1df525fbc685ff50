"""The candidate the verifiers see, from the one the engine finished: split into reasoning and
answer by the job's reasoning parser, and its tool calls read when the request offered tools.
"""

from __future__ import annotations

from dataclasses import replace

from bestofk.service.reasoning import ReasoningParsers, Split
from bestofk.service.rerank import RerankJob
from bestofk.verifiers.base import Candidate


def to_verify(
    candidate: Candidate, job: RerankJob, reasoning: ReasoningParsers | None
) -> Candidate:
    """The candidate to verify, from the engine's: with a reasoning parser, split into
    reasoning and answer; with tools, the answer's tool calls read by the tool parser."""
    if job.reasoning_parser is not None and reasoning is not None:
        candidate = _split(candidate, job, job.reasoning_parser, reasoning)
    elif candidate.reasoning is not None:
        # A backend's parser sent thinking apart, but this job reads none: the text is the
        # candidate, as without a parser anywhere.
        candidate = replace(candidate, reasoning=None)
    if job.parse_calls is not None and candidate.answered:
        candidate = replace(candidate, calls=job.parse_calls(candidate.text))
    return candidate


def _split(
    candidate: Candidate, job: RerankJob, name: str, reasoning: ReasoningParsers
) -> Candidate:
    """``candidate`` (as the engine finished it) split into reasoning and answer: by the
    remote backend when it sent them apart (its ``reasoning``), else here with the same
    parser."""
    start, end = reasoning.markers(name)
    if candidate.reasoning or (
        # A backend that splits sent this one with nothing thought: unless its markers are in
        # the text, for then the backend did not split it (another server behind the URL).
        candidate.reasoning is not None and not any(m and m in candidate.text for m in (start, end))
    ):
        # The backend's own parser split it; its end marker is gone, so the whole output is
        # told back as vLLM's parsers read it: reasoning, the marker, the answer.
        split = Split(
            candidate.reasoning,
            candidate.text or None,
            reasoning.reasoning_tokens(candidate.tokens, candidate.text),
        )
        output = (candidate.reasoning or "") + end + candidate.text
    else:
        split = reasoning.split(
            name, candidate.text, candidate.tokens, job.prompt.chat_template_kwargs
        )
        output = candidate.text
    return replace(
        candidate,
        text=split.answer or "",
        reasoning=split.reasoning,
        output=output,
        answered=split.answer is not None,
        reasoning_tokens=split.reasoning_tokens,
    )
