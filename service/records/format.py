"""The record schema: one JSON object per request, one line per record, versioned.

A record holds everything behind one choice: the prompt (text, or chat messages), every
candidate with its verdicts and combined score, the selection and which candidate it chose,
the request's stats, usage and timing, the profile and the verifier specs, the model, the
request id and a UTC timestamp. Exporters and ``bestofk stats`` read records back through
:meth:`Record.from_json`, which checks every field's type, accepts older versions and ignores
fields it does not know, so a newer writer stays readable by an older reader as long as
``version`` is not bumped.

Version history: 1, the first. Fields added since without a version bump (older readers ignore
them, this reader defaults them): a candidate's ``ready_ms``, ``verified_ms``, ``answer``,
``reasoning``, ``output``, ``reasoning_tokens``, ``tool_calls``, ``cut`` and ``confidence``,
the usage's ``reasoning_tokens``, the selection's ``tie_break``, the stats' ``k_requested``
and ``sampled`` (read as ``k``), ``waves`` (1), ``stopped_by``, ``cut`` and
``confidence_threshold``.

The candidates, their verdicts, the stats, usage and timing are the output family's models
(``schemas/output.py``, the native response's), which ``results.as_data`` fills for both;
the record classes here extend them with the few fields only a record keeps.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

import pydantic
from pydantic import BaseModel, Field, model_validator

from bestofk.service import results
from bestofk.service.schemas.output import CandidateOut, Stats, TimingOut, Usage, VerdictOut

if TYPE_CHECKING:
    from bestofk.service.rerank import RerankJob, RerankResult

SCHEMA_VERSION = 1
REDACTED = "[REDACTED]"
MAX_RECORD_BYTES = 32 * 1024 * 1024
"""No record line is longer: the writer drops a record that would be (``too_large``), and a
reader skips a longer line without loading it. At the default limits the candidates' text is
at most half of it (64 candidates x 4096 tokens x the 64-byte-per-token cap)."""

Source = Literal["generate", "verify"]


class RecordFormatError(ValueError):
    """A line that is not a record: not JSON, not a record's shape, or a version from the
    future."""


class VerdictRecord(VerdictOut):
    """A verdict as the response has it, and what the verifier itself spent."""

    tokens: int = 0
    """Tokens the verifier itself generated (an LLM judge); counted in usage.verifier_tokens."""


class CandidateRecord(CandidateOut):
    """A candidate as the response has it, and what only a record keeps."""

    # The response's verdicts, each with its tokens (mypy: a list's item type is invariant).
    verdicts: list[VerdictRecord] = Field(default_factory=list)  # type: ignore[assignment]
    required_ok: bool = True
    """Every required verifier passed (a candidate that did not ranks below every one that
    did)."""
    ready_ms: float | None = None
    """When it was finished (generated or given), in ms since the request arrived."""
    verified_ms: float | None = None
    """When its pointwise verifiers were done, in ms since the request arrived."""
    answer: str | None = None
    """Its answer key under the ``vote`` policy: candidates with the same one form a cluster."""
    output: str | None = None
    """The whole completion as generated (thinking, its end marker, answer), when split."""

    @property
    def completion(self) -> str:
        """What the model generated, whole: the text to train on (thinking included)."""
        return self.output if self.output is not None else self.text

    @property
    def verifier_error(self) -> bool:
        """A verifier broke (timeout, crash) rather than judged: the verdict is no signal."""
        return any(v.error for v in self.verdicts)


class SelectionRecord(BaseModel):
    """The selection policy and what it chose."""

    policy: str
    chosen: int
    """The chosen candidate's index."""
    beta: float | None = None
    seed: int | None = None
    extract: str | None = None
    tie_break: str | None = None
    """``logprob`` or ``index`` (None in records written before it was kept)."""


class StatsRecord(Stats):
    """The request's stats, as the response reports them."""

    # Any string, where the response's is the enum: a newer writer's reason stays readable.
    stopped_by: str | None = None  # type: ignore[assignment]

    @model_validator(mode="before")
    @classmethod
    def _older(cls, data: Any) -> Any:
        # Before they were kept, every request started and asked for the K it sampled.
        if isinstance(data, dict) and "k" in data:
            return {"k_requested": data["k"], "sampled": data["k"], **data}
        return data


class Record(BaseModel):
    """One request: prompt, candidates, verdicts, choice, stats, timing."""

    id: str
    timestamp: str
    """ISO 8601, UTC, when the result was ready."""
    model: str
    source: Source
    """``generate``: the candidates are the model's samples; ``verify``: a client sent them."""
    prompt: str | None
    """The text prompt, or None for a chat."""
    messages: list[dict[str, Any]] | None
    """The chat messages, or None for a text prompt."""
    profile: str | None
    verifiers: list[dict[str, Any]]
    """Every verifier spec, the profile's first, as ``model_dump`` gives them."""
    selection: SelectionRecord
    stats: StatsRecord
    candidates: list[CandidateRecord]
    """In index order."""
    sampling: dict[str, Any] | None = None
    """The sampling settings (None for ``verify``, where nothing was sampled)."""
    usage: Usage | None = None
    """None only in a record written by hand: bestofk always keeps it."""
    timing: TimingOut | None = None
    """None only in a record written by hand: bestofk always keeps it."""
    version: int = SCHEMA_VERSION

    @property
    def is_chat(self) -> bool:
        """The prompt is a list of chat messages."""
        return self.messages is not None

    @property
    def prompt_key(self) -> str:
        """The same string for the same prompt, whichever request carried it."""
        if self.messages is not None:
            return "chat:" + json.dumps(self.messages, sort_keys=True, ensure_ascii=False)
        return "text:" + (self.prompt or "")

    @property
    def has_verdicts(self) -> bool:
        """Some verifier judged the candidates (a request without verifiers has no labels)."""
        return any(c.verdicts for c in self.candidates)

    def to_line(self) -> bytes:
        """One complete JSONL line, newline included. Non-finite floats are written as null
        (pydantic's default, ``ser_json_inf_nan``): NaN and infinities are not JSON, and
        pyarrow (``datasets``) and most readers reject them."""
        return self.model_dump_json().encode() + b"\n"

    @classmethod
    def from_json(cls, line: bytes) -> Record:
        """The record on one line, written by this or an older version; unknown fields are
        ignored, a field of the wrong type is an error."""
        try:
            # Strict: a string where a number belongs is not coerced into one.
            record = cls.model_validate_json(line, strict=True)
        except pydantic.ValidationError as exc:
            raise RecordFormatError(_describe(line, exc)) from None
        if record.version > SCHEMA_VERSION:
            raise RecordFormatError(_too_new(record.version))
        return record


def _too_new(version: int) -> str:
    return f"record version {version} is not one this bestofk reads (1..{SCHEMA_VERSION})"


def _describe(line: bytes, exc: pydantic.ValidationError) -> str:
    """What is wrong with a line that is not a record, in one line."""
    first = exc.errors(include_url=False)[0]
    if first["type"] == "json_invalid":
        return f"not JSON ({first['msg']})"
    if not first["loc"]:
        return "not a record (a JSON object with id, candidates, stats...)"
    # A newer writer's record fails on its new shape: say the version, not the field.
    version = json.loads(line).get("version")
    if isinstance(version, int) and version > SCHEMA_VERSION:
        return _too_new(version)
    where = ".".join(str(part) for part in first["loc"])
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"not a record: {where}: {first['msg']}{more}"


def compile_redactions(patterns: Sequence[str]) -> list[re.Pattern[str]]:
    """Compile redaction regexes once; an invalid one raises ``re.error`` naming it."""
    return [re.compile(p) for p in patterns]


def redact(text: str, patterns: Sequence[re.Pattern[str]]) -> str:
    """``text`` with every match of every pattern replaced by ``[REDACTED]``."""
    for pattern in patterns:
        text = pattern.sub(REDACTED, text)
    return text


def _redact_message(message: Mapping[str, Any], patterns: Sequence[re.Pattern[str]]) -> Any:
    out = dict(message)
    content = out.get("content")
    if isinstance(content, str):
        out["content"] = redact(content, patterns)
    elif isinstance(content, list):  # OpenAI content parts
        out["content"] = [
            {**part, "text": redact(part["text"], patterns)}
            if isinstance(part, dict) and isinstance(part.get("text"), str)
            else part
            for part in content
        ]
    return out


def build(
    job: RerankJob,
    result: RerankResult,
    *,
    profile: str | None,
    finished_at: float,
    redactions: Sequence[re.Pattern[str]] = (),
) -> Record:
    """The record of one finished request. ``finished_at``: ``time.time()`` at completion."""
    prompt = job.prompt
    messages: list[dict[str, Any]] | None = None
    if prompt.messages is not None:
        messages = [_redact_message(m, redactions) for m in prompt.messages]
    text = redact(prompt.text, redactions) if prompt.text is not None else None
    sel = job.selection
    generated = job.given is None
    data = results.as_data(result, record=True)
    return Record(
        id=result.request_id,
        timestamp=datetime.fromtimestamp(finished_at, UTC).isoformat(timespec="milliseconds"),
        model=result.model,
        source="generate" if generated else "verify",
        prompt=text,
        messages=messages,
        profile=profile,
        verifiers=[spec.model_dump(mode="json") for spec in job.specs],
        selection=SelectionRecord(
            policy=sel.policy,
            chosen=result.chosen.candidate.index,
            beta=sel.beta,
            seed=sel.seed,
            extract=sel.extract,
            tie_break=sel.tie_break,
        ),
        stats=data["stats"],
        candidates=data["candidates"],
        sampling=_sampling(job) if generated else None,
        usage=data["usage"],
        timing=data["timing"],
    )


def _sampling(job: RerankJob) -> dict[str, Any]:
    s = job.sampling
    out: dict[str, Any] = {
        "temperature": s.temperature,
        "top_p": s.top_p,
        "top_k": s.top_k,
        "min_p": s.min_p,
        "repetition_penalty": s.repetition_penalty,
        "max_tokens": s.max_tokens,
        "min_tokens": s.min_tokens,
        "stop": list(s.stop),
        "seed": s.seed,
        "presence_penalty": s.presence_penalty,
        "frequency_penalty": s.frequency_penalty,
    }
    # Kept only when set: logit_bias keys are token ids, which JSON turns into strings.
    if s.logit_bias:
        out["logit_bias"] = {str(k): v for k, v in s.logit_bias.items()}
    if s.json_schema is not None:
        out["json_schema"] = dict(s.json_schema)
    return out
