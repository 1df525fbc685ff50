"""The record schema: one JSON object per request, one line per record, versioned.

A record holds everything behind one choice: the prompt (text, or chat messages), every
candidate with its verdicts and combined score, the selection and which candidate it chose,
the request's stats, usage and timing, the profile and the verifier specs, the model, the
request id and a UTC timestamp. Exporters and ``bestofk stats`` read records back through
:meth:`Record.from_json`, which checks every field's type, accepts older versions and ignores
fields it does not know, so a newer writer stays readable by an older reader as long as
``version`` is not bumped.

Version history: 1, the first. Fields added since without a version bump (older readers ignore
them, this reader defaults them): a candidate's ``ready_ms``, ``verified_ms``, ``answer`` and
``tool_calls``, the selection's ``tie_break``, the stats' ``k_requested``.

The candidates, their verdicts, the stats, usage and timing hold the native response's fields
(``results.as_data``, one conversion for both) and the few only a record keeps.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

import pydantic

from bestofk.service import results
from bestofk.verifiers.base import Verdict

if TYPE_CHECKING:
    from bestofk.service.pipeline import RerankJob, RerankResult

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


@dataclass(slots=True)
class CandidateRecord:
    """One candidate with its verdicts and what they add up to."""

    index: int
    text: str
    """The answer when a reasoning parser split the output, else the whole output."""
    score: float
    passed: bool
    """Every verifier passed (and there was at least one)."""
    required_ok: bool = True
    finish_reason: str | None = None
    tokens: int = 0
    mean_logprob: float | None = None
    verdicts: list[Verdict] = field(default_factory=list)
    ready_ms: float | None = None
    """When it was finished (generated or given), in ms since the request arrived."""
    verified_ms: float | None = None
    """When its pointwise verifiers were done, in ms since the request arrived."""
    answer: str | None = None
    """Its answer key under the ``vote`` policy: candidates with the same one form a cluster."""
    reasoning: str | None = None
    """The thinking before the answer, when a reasoning parser split the output."""
    output: str | None = None
    """The whole completion as generated (thinking, its end marker, answer), when split."""
    reasoning_tokens: int = 0
    tool_calls: list[dict[str, Any]] | None = None
    """The calls a tool parser read from ``text`` (OpenAI's shape), when tools were offered;
    None in older records."""
    cut: bool = False
    """Confidence-aware stopping cut it short: its text is partial, and it was not verified."""
    confidence: float | None = None
    """Its lowest group confidence (DeepConf), with confidence-aware stopping."""

    @property
    def completion(self) -> str:
        """What the model generated, whole: the text to train on (thinking included)."""
        return self.output if self.output is not None else self.text

    @property
    def verifier_error(self) -> bool:
        """A verifier broke (timeout, crash) rather than judged: the verdict is no signal."""
        return any(v.error for v in self.verdicts)


@dataclass(slots=True)
class SelectionRecord:
    """The selection policy and what it chose."""

    policy: str
    chosen: int
    """The chosen candidate's index."""
    beta: float | None = None
    seed: int | None = None
    extract: str | None = None
    tie_break: str | None = None
    """``logprob`` or ``index`` (None in records written before it was kept)."""


@dataclass(slots=True)
class StatsRecord:
    """The request's counts, as the response's ``stats`` reports them."""

    k: int
    generated: int
    passing: int
    first_sample_passed: bool
    early_exit: bool
    partial: bool
    k_requested: int | None = None
    """The K asked for or defaulted (greedy sampling and load-aware K sample fewer); None in
    records written before it was kept: ``k``."""
    waves: int = 1
    """Engine streams the candidates came in (adaptive K's waves; 1 in older records)."""
    sampled: int | None = None
    """Candidates started (None in records written before it was kept: ``k``)."""
    stopped_by: str | None = None
    """Why sampling ended (``k``, ``early_exit``, ``majority``, ``budget_tokens``,
    ``budget_deadline``); None in older records."""
    cut: int = 0
    """Candidates confidence-aware stopping cut short."""
    confidence_threshold: float | None = None
    """The threshold the warm-up wave set, with confidence-aware stopping."""


@dataclass(slots=True)
class Record:
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
    usage: dict[str, int] = field(default_factory=dict)
    timing: dict[str, float | None] = field(default_factory=dict)
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

    def to_dict(self) -> dict[str, Any]:
        """The JSON object written to the record file (non-finite floats become null)."""
        out: dict[str, Any] = _finite(dataclasses.asdict(self))
        return out

    def to_line(self) -> bytes:
        """One complete JSONL line, newline included."""
        text = json.dumps(self.to_dict(), ensure_ascii=False, separators=(",", ":"))
        return (text + "\n").encode()

    @classmethod
    def from_json(cls, line: bytes) -> Record:
        """The record on one line, written by this or an older version; unknown fields are
        ignored, a field of the wrong type is an error."""
        try:
            # Strict: a string where a number belongs is not coerced into one.
            record = _adapter().validate_json(line, strict=True)
        except pydantic.ValidationError as exc:
            raise RecordFormatError(_describe(line, exc)) from None
        if record.version > SCHEMA_VERSION:
            raise RecordFormatError(_too_new(record.version))
        return record


@functools.cache
def _adapter() -> pydantic.TypeAdapter[Record]:
    # Built on first read, not at import: the server imports this module and never reads.
    return pydantic.TypeAdapter(Record)


def _too_new(version: int) -> str:
    return f"record version {version} is not one this bestofk reads (1..{SCHEMA_VERSION})"


def _describe(line: bytes, exc: pydantic.ValidationError) -> str:
    """What is wrong with a line that is not a record, in one line."""
    first = exc.errors(include_url=False)[0]
    if first["type"] == "json_invalid":
        return f"not JSON ({first['msg']})"
    if first["type"] == "dataclass_type" or not first["loc"]:
        return "not a record (a JSON object with id, candidates, stats...)"
    # A newer writer's record fails on its new shape: say the version, not the field.
    version = json.loads(line).get("version")
    if isinstance(version, int) and version > SCHEMA_VERSION:
        return _too_new(version)
    where = ".".join(str(part) for part in first["loc"])
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"not a record: {where}: {first['msg']}{more}"


def _candidate(raw: Mapping[str, Any]) -> CandidateRecord:
    verdicts = [_load(Verdict, v) for v in raw.get("verdicts") or []]
    record: CandidateRecord = _load(CandidateRecord, raw, verdicts=verdicts)
    return record


def _load(cls: type[Any], raw: Mapping[str, Any], **override: Any) -> Any:
    known = {f.name for f in dataclasses.fields(cls)} - override.keys()
    return cls(**{k: v for k, v in raw.items() if k in known}, **override)


def _finite(value: Any) -> Any:
    # NaN and infinities are not JSON; pyarrow (``datasets``) and most readers reject them.
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


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
        stats=_load(StatsRecord, data["stats"]),
        candidates=[_candidate(c) for c in data["candidates"]],
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
