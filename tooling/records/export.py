"""Records → training datasets, with the column names TRL's trainers expect.

- ``dpo`` (DPOTrainer): ``{prompt, chosen, rejected}``; chosen passed every verifier, rejected
  failed, ``chosen.score - rejected.score >= min_margin``, at most ``max_pairs`` per prompt.
- ``rsft`` (SFTTrainer, prompt-completion; RAFT / rejection-sampling fine-tuning):
  ``{prompt, completion}`` for passing candidates.
- ``kto`` (KTOTrainer): ``{prompt, completion, label}``, label true for passing candidates.

A text prompt stays a string and completions are strings (TRL's "standard" format); a chat
prompt stays its list of messages and each completion becomes ``[{"role": "assistant",
"content": …}]`` (TRL's "conversational" format). One column holds one type, so a file is
either all text or all chat: records that mix both need ``only``.

Candidates are grouped by prompt across records and de-duplicated by text. Left out, because
their labels are no signal: records without verifiers, records cut short by the deadline
(``partial``: some verdicts are missing), candidates on which a verifier errored (a timeout is
not a wrong answer), and texts that passed in one request and failed in another (different
verifiers for the same prompt).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from bestofk.service.records.format import Record, Source

ExportFormat = Literal["dpo", "rsft", "kto"]
PromptKind = Literal["text", "chat"]
FORMATS: tuple[ExportFormat, ...] = ("dpo", "rsft", "kto")
NO_PROFILE = "-"
"""The ``profiles`` entry for requests that named no profile."""


class ExportError(ValueError):
    """The records cannot be exported as asked (e.g. text and chat prompts mixed)."""


@dataclass(frozen=True, slots=True)
class ExportOptions:
    """What to export and how much of it."""

    format: ExportFormat
    min_margin: float = 0.0
    """``dpo``: the least ``chosen.score - rejected.score`` of a pair."""
    max_pairs: int = 4
    """``dpo``: the most pairs per prompt."""
    max_per_prompt: int | None = None
    """``rsft``: the most completions per prompt; ``kto``: per prompt and label."""
    only: PromptKind | None = None
    """Export only text prompts or only chat prompts (None: the kind with more prompts)."""
    source: Source | None = "generate"
    """Only records of this source; None: all (``verify`` candidates came from a client)."""
    profiles: frozenset[str] = frozenset()
    """Only records of these profiles (``-``: no profile); empty: all."""
    verifiers: frozenset[str] = frozenset()
    """Only records scored by a verifier of one of these types; empty: all."""


@dataclass(slots=True)
class _Group:
    prompt: str | list[dict[str, Any]]
    chat: bool
    passing: dict[str, float] = field(default_factory=dict)
    """Text → score, in order of first appearance."""
    failing: dict[str, float] = field(default_factory=dict)
    records: int = 0


@dataclass(slots=True)
class ExportResult:
    """The rows and what went into them."""

    rows: list[dict[str, Any]]
    records: int = 0
    """Records read."""
    used: int = 0
    """Records that contributed candidates."""
    prompts: int = 0
    """Distinct prompts with at least one row."""
    left_out: dict[str, int] = field(default_factory=dict)
    """Records not used, by reason (``source``, ``profile``, ``verifier``, ``no_verdicts``,
    ``partial``, and ``text``/``chat`` for the prompt kind not exported)."""


def export(records: Iterable[Record], options: ExportOptions) -> ExportResult:
    """The dataset rows for ``records`` in ``options.format``."""
    if options.format not in FORMATS:
        raise ExportError(f"unknown format {options.format!r}; choose one of {', '.join(FORMATS)}")
    groups, read, left_out = _collect(records, options)
    kinds = {g.chat for g in groups}
    if len(kinds) > 1:
        # One dataset column holds one type: keep the kind with more prompts, count the other.
        chat = sum(g.chat for g in groups) > len(groups) / 2
        dropped = [g for g in groups if g.chat != chat]
        left_out["text" if chat else "chat"] = sum(g.records for g in dropped)
        groups = [g for g in groups if g.chat == chat]
    rows: list[dict[str, Any]] = []
    prompts = 0
    for group in groups:
        made = _rows(group, options)
        prompts += bool(made)
        rows.extend(made)
    used = sum(g.records for g in groups)
    return ExportResult(rows=rows, records=read, used=used, prompts=prompts, left_out=left_out)


def reason_to_skip(record: Record, options: ExportOptions) -> str | None:
    """Why ``options`` leave ``record`` out (a key of ``ExportResult.left_out``), or None."""
    if options.source is not None and record.source != options.source:
        return "source"
    if options.profiles and (record.profile or NO_PROFILE) not in options.profiles:
        return "profile"
    if options.verifiers and not options.verifiers & {v.get("type") for v in record.verifiers}:
        return "verifier"
    if options.only is not None and record.is_chat != (options.only == "chat"):
        return "chat" if record.is_chat else "text"
    if not record.has_verdicts:
        return "no_verdicts"
    if record.stats.partial:
        return "partial"
    return None


def write_jsonl(rows: Iterable[dict[str, Any]], out: Path) -> int:
    """Write one JSON object per line (what ``datasets.load_dataset("json")`` reads)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with out.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count


def _collect(
    records: Iterable[Record], options: ExportOptions
) -> tuple[list[_Group], int, dict[str, int]]:
    groups: dict[str, _Group] = {}
    read = 0
    left_out: dict[str, int] = {}
    for record in records:
        read += 1
        reason = reason_to_skip(record, options)
        if reason is not None:
            left_out[reason] = left_out.get(reason, 0) + 1
            continue
        prompt: str | list[dict[str, Any]] = (
            record.messages if record.messages is not None else record.prompt or ""
        )
        group = groups.setdefault(record.prompt_key, _Group(prompt, record.is_chat))
        group.records += 1
        for c in record.candidates:
            if not c.verdicts or c.verifier_error:
                continue
            # Conservative scores for the margin: a passing text's lowest, a failing one's highest.
            # The whole completion, thinking included: TRL trains on what the model
            # generated, and a model taught only the answers would stop thinking.
            pool = group.passing if c.passed else group.failing
            text = c.completion
            if text not in pool:
                pool[text] = c.score
            elif c.passed:
                pool[text] = min(pool[text], c.score)
            else:
                pool[text] = max(pool[text], c.score)
    for group in groups.values():
        for text in group.passing.keys() & group.failing.keys():
            del group.passing[text], group.failing[text]
    return list(groups.values()), read, left_out


def _rows(group: _Group, options: ExportOptions) -> list[dict[str, Any]]:
    def completion(text: str) -> str | list[dict[str, str]]:
        return [{"role": "assistant", "content": text}] if group.chat else text

    # Best first; sorted() is stable, so equal scores keep the order they were sampled in.
    passing = sorted(group.passing.items(), key=lambda kv: -kv[1])
    failing = sorted(group.failing.items(), key=lambda kv: kv[1])
    if options.format == "dpo":
        return [
            {"prompt": group.prompt, "chosen": completion(c), "rejected": completion(r)}
            for c, r in _pairs(passing, failing, options.min_margin, options.max_pairs)
        ]
    limit = options.max_per_prompt
    if options.format == "rsft":
        return [{"prompt": group.prompt, "completion": completion(t)} for t, _ in passing[:limit]]
    return [
        {"prompt": group.prompt, "completion": completion(t), "label": label}
        for pool, label in ((passing, True), (failing, False))
        for t, _ in pool[:limit]
    ]


def _pairs(
    passing: list[tuple[str, float]],
    failing: list[tuple[str, float]],
    min_margin: float,
    max_pairs: int,
) -> list[tuple[str, str]]:
    """Up to ``max_pairs`` (chosen, rejected) with the widest margins, each text used once
    before any is reused, so a prompt's pairs cover as many distinct completions as they can."""
    # Pairs come from the best M passing and the worst M failing texts: bounds the work at M²
    # however often a prompt was asked, and pairs best with worst, the clearest contrast.
    candidates = [
        (c, r, cs - rs)
        for c, cs in passing[:max_pairs]
        for r, rs in failing[:max_pairs]
        if cs - rs >= min_margin
    ]
    candidates.sort(key=lambda t: -t[2])
    chosen: list[tuple[str, str]] = []
    used_c: set[str] = set()
    used_r: set[str] = set()
    for c, r, _ in candidates:
        if len(chosen) < max_pairs and c not in used_c and r not in used_r:
            chosen.append((c, r))
            used_c.add(c)
            used_r.add(r)
    for c, r, _ in candidates:
        if len(chosen) >= max_pairs:
            break
        if (c, r) not in chosen:
            chosen.append((c, r))
    return chosen
