"""Request records: written off the request path, lossless under load, intact after SIGKILL,
exported as DPO/RSFT/KTO datasets that ``datasets`` loads, and summarised by ``bestofk stats``.

The integration tests run a recording bestofk in front of the session's vLLM server (it starts
in seconds, no second engine) and drive it over real HTTP.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from bestofk.service import results
from bestofk.service.engines.base import Prompt, SamplingConfig
from bestofk.service.records.format import Record, RecordFormatError, build
from bestofk.service.records.reader import complete_lines, read_records, record_files
from bestofk.service.records.recorder import Recorder
from bestofk.service.rerank import RerankJob, RerankResult, Timing
from bestofk.service.schemas.output import RerankResponse
from bestofk.service.selection import Scored
from bestofk.tooling.procs import ROOT, VENV_BIN, Server, engine_env, start_bestofk
from bestofk.tooling.records.export import ExportOptions, export
from bestofk.tooling.records.stats import compute
from bestofk.verifiers.base import Candidate, Verdict
from bestofk.verifiers.registry import parse_spec
from tests.conftest import CONFIG

TASKS = [json.loads(line) for line in (ROOT / "demo" / "tasks.jsonl").read_text().splitlines()]
FACTORIALS = [t for t in TASKS if t["family"] == "factorial"]

# ---------------------------------------------------------------------------------------------
# Synthetic results, for the parts that need no server


def make(
    prompt: str | list[dict[str, Any]],
    candidates: Sequence[tuple[str, bool, float]],
    *,
    error_at: int | None = None,
    partial: bool = False,
    request_id: str = "gen-1",
) -> tuple[RerankJob, RerankResult]:
    """A job and its result: ``candidates`` are (text, passed, score) in index order."""
    spec = parse_spec({"type": "exact", "reference": "1"})
    scored = []
    for i, (text, passed, score) in enumerate(candidates):
        error = "TimeoutError: judge" if i == error_at else None
        verdict = Verdict("exact", score, passed, error=error)
        scored.append(Scored(Candidate(i, text, "stop", 3, -0.5), [verdict], score, passed))
    job = RerankJob(
        request_id=request_id,
        prompt=Prompt(text=prompt) if isinstance(prompt, str) else Prompt(messages=prompt),
        k=len(candidates),
        sampling=SamplingConfig(),
        specs=[spec],
    )
    result = RerankResult(
        request_id=request_id,
        model="demo",
        chosen=max(scored, key=lambda s: s.score),
        candidates=scored,
        k=len(candidates),
        early_exit=False,
        partial=partial,
        prompt_tokens=5,
        completion_tokens=12,
        verifier_tokens=0,
        timing=Timing(total_ms=1.0),
    )
    return job, result


def record(
    prompt: str | list[dict[str, Any]], *candidates: tuple[str, bool, float], **kw: Any
) -> Record:
    """The record the server would write for ``make(...)``'s job and result."""
    job, result = make(prompt, candidates, **kw)
    return build(job, result, profile=None, finished_at=time.time())


def load_dataset(path: Path, cache: Path) -> Any:
    """``datasets.load_dataset("json", ...)``, the way a trainer script reads the export."""
    try:
        import datasets  # type: ignore[import-untyped]
    except ImportError:
        pytest.fail("`datasets` is not installed: pip install datasets (the test extra)")
    return datasets.load_dataset("json", data_files=str(path), split="train", cache_dir=str(cache))


# ---------------------------------------------------------------------------------------------
# The writer


def test_recorder_rotates_redacts_and_is_readable_while_writing(tmp_path: Path) -> None:
    recorder = Recorder(tmp_path, max_bytes=4000, redact=[r"secret-\d+"])
    recorder.start()
    try:
        for i in range(40):
            job, result = make(f"q{i} secret-{i}99 end", [("1", True, 1.0), ("2", False, 0.0)],
                               request_id=f"gen-{i}")  # fmt: skip
            assert recorder.submit(job, result)
        # Readable while the writer is open: every record shows up, whole, before close().
        deadline = time.monotonic() + 10
        while len(list(read_records(tmp_path))) < 40 and time.monotonic() < deadline:
            time.sleep(0.05)
        records = list(read_records(tmp_path))
    finally:
        recorder.close()
    assert [r.id for r in records] == [f"gen-{i}" for i in range(40)], "lost or out of order"
    files = record_files(tmp_path)
    assert len(files) > 3, "no rotation"
    assert all(f.stat().st_size <= 4000 for f in files)
    assert all(re.fullmatch(r"records-\d{8}T\d{6}Z-\d+-\d{4}\.jsonl", f.name) for f in files)
    assert records[7].prompt == "q7 [REDACTED] end"
    assert "secret-" not in "".join(f.read_text() for f in files)
    assert records[0].candidates[1].verdicts[0].verifier == "exact"
    assert records[0].verifiers == [
        {
            "type": "exact",
            "weight": 1.0,
            "required": False,
            "input": "answer",
            "reference": "1",
            "numeric": True,
        }
    ]


def test_full_queue_drops_counts_and_never_blocks(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = Recorder(tmp_path, queue_size=2)  # not started: nothing drains the queue
    job, result = make("q", [("1", True, 1.0)])
    start = time.perf_counter()
    with caplog.at_level(logging.WARNING, "bestofk.service.records.drops"):
        outcomes = [recorder.submit(job, result) for _ in range(500)]
    elapsed = time.perf_counter() - start
    assert outcomes[:2] == [True, True] and not any(outcomes[2:])
    dropped = recorder.metrics.value("bestofk_records_dropped_total", reason="queue_full")
    assert dropped == 498, "each recorder counts into its own metrics unless given the app's"
    assert elapsed < 0.5, f"submitting to a full queue took {elapsed:.2f}s"
    warnings = [r for r in caplog.records if "dropped" in r.getMessage()]
    assert 1 <= len(warnings) <= 2, "drops must be logged, but not once per record"


def test_reader_skips_a_trailing_partial_line_and_rejects_corruption(tmp_path: Path) -> None:
    good = record("q", ("1", True, 1.0)).to_line()
    file = tmp_path / "records-20250101T000000Z-1-0000.jsonl"
    file.write_bytes(good + good + good[: len(good) // 2])  # a writer killed mid-line
    assert len(list(read_records(tmp_path))) == 2
    file.write_bytes(good + b'{"version": 1, "id": \n' + good)  # a broken *complete* line
    with pytest.raises(RecordFormatError, match=r"records-.*\.jsonl:2"):
        list(read_records(file))
    file.write_bytes(good.replace(b'"version":1', b'"version":99'))
    with pytest.raises(RecordFormatError, match="version 99"):
        list(read_records(file))


# ---------------------------------------------------------------------------------------------
# Export and stats on synthetic records


def test_the_response_and_the_record_keep_every_field_as_data_gives() -> None:
    job, result = make("q", [("1", True, 1.0), ("2", False, 0.0)], error_at=1)
    result.answers = {0: "1"}
    result.candidates[0].ready_ms = 3.0
    data = results.as_data(result)
    # The response's shape key for key, so the OpenAI and Anthropic routes embed it as it is.
    assert RerankResponse.model_validate(data).model_dump() == data
    # The record's models extend the response's: as_data(record=True) fills every field of
    # theirs and no other. A key it gives that a model lacks would be dropped without a word
    # (records ignore unknown fields), and a field it does not give would keep its default.
    full = results.as_data(result, record=True)
    rec = build(job, result, profile=None, finished_at=time.time())
    kept = rec.model_dump(include={"candidates", "stats", "usage", "timing"})
    assert kept == {key: full[key] for key in kept}
    assert rec.candidates[0].answer == "1" and rec.candidates[1].verdicts[0].error
    assert Record.from_json(rec.to_line()) == rec


def test_the_response_schema_marks_every_field_required() -> None:
    # Every response has every key; a default is for record lines written before a field was.
    schema = RerankResponse.model_json_schema(mode="serialization")
    for model in [schema, *schema["$defs"].values()]:
        assert set(model["required"]) == set(model["properties"]), model["title"]


def test_a_first_version_line_loads_with_the_fields_added_since_defaulted() -> None:
    # As the first writer wrote it: none of the fields the version history lists as added.
    line = json.dumps({
        "id": "gen-1", "timestamp": "2025-11-25T00:00:00.000+00:00", "model": "demo",
        "source": "generate", "prompt": "q", "messages": None, "profile": None,
        "verifiers": [{"type": "exact", "reference": "1"}],
        "selection": {"policy": "argmax", "chosen": 0, "beta": None, "seed": None,
                      "extract": None},
        "stats": {"k": 2, "generated": 2, "passing": 1, "first_sample_passed": True,
                  "early_exit": False, "partial": False},
        "candidates": [
            {"index": i, "text": text, "score": float(i == 0), "passed": i == 0,
             "required_ok": True, "finish_reason": "stop", "tokens": 3, "mean_logprob": -0.5,
             "verdicts": [{"verifier": "exact", "score": float(i == 0), "passed": i == 0,
                           "detail": "", "latency_ms": 0.1, "error": None, "tokens": 0}]}
            for i, text in enumerate(["1", "2"])
        ],
        "sampling": {"temperature": 1.0, "top_p": 1.0, "max_tokens": 16, "min_tokens": 0,
                     "stop": [], "seed": None, "presence_penalty": 0.0,
                     "frequency_penalty": 0.0},
        "usage": {"prompt_tokens": 5, "completion_tokens": 6, "verifier_tokens": 0},
        "timing": {"queue_ms": 0.1, "first_candidate_ms": 2.0, "generate_ms": 3.0,
                   "verify_ms": 0.5, "total_ms": 4.0},
        "version": 1,
    }).encode()  # fmt: skip
    rec = Record.from_json(line)
    # Before k_requested and sampled were kept, a request asked for and started all K.
    assert (rec.stats.k_requested, rec.stats.sampled, rec.stats.waves) == (2, 2, 1)
    assert rec.stats.stopped_by is None and rec.stats.cut == 0
    first = rec.candidates[0]
    assert first.reasoning is None and first.tool_calls is None and not first.cut
    assert first.completion == "1" and first.answer is None and first.ready_ms is None
    assert rec.usage is not None and rec.usage.reasoning_tokens == 0
    assert rec.timing is not None and rec.timing.total_ms == 4.0
    assert rec.selection.tie_break is None
    assert Record.from_json(rec.to_line()) == rec
    # A newer writer's line: fields this reader does not know are ignored, and a stop reason
    # it does not know is kept.
    newer = Record.from_json(
        line.replace(
            b'"partial": false', b'"partial": false, "stopped_by": "a newer reason", "unknown": 1'
        )
    )
    assert newer.stats.stopped_by == "a newer reason"


def test_a_line_of_the_wrong_shape_is_described_in_one_line() -> None:
    good = json.loads(record("q", ("1", True, 1.0)).to_line())
    cases = [
        ({**good, "stats": 5}, "not a record: stats: Input should be an object"),
        # Strict: a number in a string is not a number.
        ({**good, "candidates": [{**good["candidates"][0], "score": "1"}]},
         "not a record: candidates.0.score: Input should be a valid number"),
        ({**good, "version": 2, "candidates": 1}, "record version 2 is not one"),
    ]  # fmt: skip
    for raw, reason in cases:
        with pytest.raises(RecordFormatError) as caught:
            Record.from_json(json.dumps(raw).encode())
        assert str(caught.value).startswith(reason) and "\n" not in str(caught.value)


def test_non_finite_floats_are_written_as_null() -> None:
    job, result = make("q", [("1", True, 1.0), ("2", False, 0.0)])
    first = result.candidates[0]
    first.candidate = dataclasses.replace(first.candidate, mean_logprob=-math.inf)
    first.confidence = math.nan
    line = build(job, result, profile=None, finished_at=time.time()).to_line()
    assert b"NaN" not in line and b"Infinity" not in line  # json.loads would read them
    assert json.loads(line)["candidates"][0]["mean_logprob"] is None
    assert Record.from_json(line).candidates[0].confidence is None


def test_export_rules(tmp_path: Path) -> None:
    records = [
        record("2+2?", ("4", True, 1.0), ("5", False, 0.0), ("4", True, 1.0), ("six", False, 0.4)),
        record("2+2?", ("four", True, 0.9), ("5", False, 0.0)),  # the same prompt again
        record("1+1?", ("2", True, 0.6), ("3", False, 0.5), ("x", False, 0.0)),
        record("0?", ("0", True, 1.0), ("9", False, 0.0), error_at=1),  # errored: no signal
        record("7?", ("7", True, 1.0), ("8", False, 0.0), partial=True),  # cut short: skipped
        record("3?", ("3", True, 1.0)),
        record("3?", ("3", False, 0.0)),  # passes here, fails there: conflicting, dropped
    ]
    dpo = export(records, ExportOptions("dpo", min_margin=0.3, max_pairs=3)).rows
    assert dpo == [
        # Distinct texts first, widest margin first; then reuse to fill max_pairs.
        {"prompt": "2+2?", "chosen": "4", "rejected": "5"},
        {"prompt": "2+2?", "chosen": "four", "rejected": "six"},
        {"prompt": "2+2?", "chosen": "four", "rejected": "5"},
        {"prompt": "1+1?", "chosen": "2", "rejected": "x"},  # "3" is within the margin
    ]
    rsft = export(records, ExportOptions("rsft", max_per_prompt=1)).rows
    assert rsft == [
        {"prompt": "2+2?", "completion": "4"},
        {"prompt": "1+1?", "completion": "2"},
        {"prompt": "0?", "completion": "0"},
    ]
    kto = export(records, ExportOptions("kto")).rows
    assert {(r["prompt"], r["completion"], r["label"]) for r in kto} == {
        ("2+2?", "4", True), ("2+2?", "four", True), ("2+2?", "5", False),
        ("2+2?", "six", False), ("1+1?", "2", True), ("1+1?", "3", False),
        ("1+1?", "x", False), ("0?", "0", True),
    }  # fmt: skip


def test_chat_prompts_stay_conversational_and_every_format_loads(tmp_path: Path) -> None:
    from bestofk.tooling.records.export import write_jsonl

    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}]
    records = [record(chat, ("4", True, 1.0), ("5", False, 0.0)), record("1+1?", ("2", True, 1.0))]
    # Mixed kinds: one column holds one type, so the other kind is counted, not exported.
    mixed = export(
        [*records, record("3+3?", ("6", True, 1.0), ("7", False, 0.0))], ExportOptions("dpo")
    )
    assert mixed.rows == [{"prompt": "3+3?", "chosen": "6", "rejected": "7"}]
    assert mixed.left_out == {"chat": 1}
    rows = export(records, ExportOptions("dpo", only="chat")).rows
    assert rows == [
        {
            "prompt": chat,
            "chosen": [{"role": "assistant", "content": "4"}],
            "rejected": [{"role": "assistant", "content": "5"}],
        }
    ]
    for fmt in ("dpo", "rsft", "kto"):
        out = tmp_path / f"{fmt}.jsonl"
        write_jsonl(export(records, ExportOptions(fmt, only="chat")).rows, out)
        data = load_dataset(out, tmp_path / "hf")
        assert len(data) >= 1 and data[0]["prompt"] == chat


def test_stats() -> None:
    records = [
        record("a", ("x", False, 0.0), ("1", True, 1.0)),
        record("b", ("1", True, 1.0), ("y", False, 0.0)),
        record("c", ("x", False, 0.0), ("y", False, 0.0)),
        record("d", ("1", True, 1.0), ("1", True, 1.0)),
        record("e", ("1", True, 1.0), partial=True),
    ]
    report = compute(records)
    assert report.records == 5 and report.skipped == {"partial": 1}
    by = {(r.profile, r.verifier): r for r in report.rows}
    assert set(by) == {("-", "all"), ("-", "exact")}
    row = by["-", "all"]
    assert (row.requests, row.pass_at_1, row.pass_at_k) == (4, 0.5, 0.75)
    assert row.lift == pytest.approx(0.25) and row.pass_rate == pytest.approx(4 / 8)
    assert row.mean_k == 2 and row.early_exit_rate == 0 and row.advice.startswith("should pay")


# ---------------------------------------------------------------------------------------------
# A recording server under real load


@dataclass
class Recorded:
    """What the load run sent and what the server wrote."""

    directory: Path
    answered: list[tuple[str, dict[str, Any]]]
    """(kind, native-shaped reply) for every request answered 200 (OpenAI ones: ``bestofk``).
    Kinds: verify, generate, digits (the profile), chat (``/v1/chat/completions``)."""
    sent: int
    counters: dict[str, float]
    """The server's records written/dropped counters, scraped before it stopped."""


def _verify_body(i: int) -> dict[str, Any]:
    task = FACTORIALS[i % len(FACTORIALS)]
    right = task["verifiers"][0]["reference"]
    # Deterministic verdicts: candidate order varies so that pass@1 is sometimes 0.
    wrong = [str(int(right) + 1), "I don't know", right + "0"]
    candidates = [*wrong[: i % 3], right, *wrong[i % 3 :]]
    body: dict[str, Any] = {"candidates": candidates, "verifiers": task["verifiers"]}
    if i % 4 == 3:
        body["messages"] = [{"role": "user", "content": task["prompt"]}]
    else:
        body["prompt"] = task["prompt"] + (" secret-42" if i == 0 else "")
    return body


def _requests() -> list[tuple[str, str, dict[str, Any]]]:
    """(kind, path, body) of the load run's 40 requests."""
    out: list[tuple[str, str, dict[str, Any]]] = []
    for i in range(24):
        out.append(("verify", "/verify", _verify_body(i)))
    for i in range(10):
        task = FACTORIALS[i % len(FACTORIALS)]
        body = {"prompt": task["prompt"], "k": 4, "verifiers": task["verifiers"],
                "sampling": {"temperature": 1.0, "max_tokens": 12}}  # fmt: skip
        out.append(("generate", "/generate", body))
    for i in range(3):
        body = {"prompt": FACTORIALS[i]["prompt"], "profile": "digits",
                "sampling": {"max_tokens": 8}}  # fmt: skip
        out.append(("digits", "/generate", body))
    for i in range(3):
        # best_of 8: a pass-against-fail pair per prompt is then near certain (with 3, two
        # prompts of three had one about 81 % of the time, and the export test failed).
        body = {"model": "demo", "best_of": 8, "max_tokens": 8,
                "messages": [{"role": "user", "content": FACTORIALS[i]["prompt"]}],
                "verifiers": FACTORIALS[i]["verifiers"]}  # fmt: skip
        out.append(("chat", "/v1/chat/completions", body))
    return out


def _scrape(server: Server) -> dict[str, float]:
    values: dict[str, float] = {}
    for line in httpx.get(server.url + "/metrics", timeout=10).text.splitlines():
        if line.startswith("bestofk_records_") and "_total" in line:
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def _wait_for_lines(directory: Path, n: int, timeout_s: float = 20) -> int:
    deadline = time.monotonic() + timeout_s
    count = 0
    while time.monotonic() < deadline:
        count = sum(1 for _ in read_records(directory)) if directory.exists() else 0
        if count >= n:
            break
        time.sleep(0.1)
    return count


@pytest.fixture(scope="module")
def recorded(vllm_backend: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Recorded]:
    """40 concurrent requests against a recording bestofk, then a graceful stop."""
    base = tmp_path_factory.mktemp("records")
    directory = base / "records"
    env = engine_env(BESTOFK_CONFIG=str(CONFIG), BESTOFK_RECORD_REDACT='["secret-\\\\d+"]')
    server = start_bestofk(
        base / "bestofk.log", "--backend", vllm_backend.url, "--record-dir", str(directory),
        env=env,
    )  # fmt: skip
    try:
        server.wait_ready(60)
        requests = _requests()

        def send(item: tuple[str, str, dict[str, Any]]) -> httpx.Response:
            return httpx.post(server.url + item[1], json=item[2], timeout=120)

        with ThreadPoolExecutor(len(requests)) as pool:
            replies = list(pool.map(send, requests))
        answered = [
            (kind, r.json()["bestofk"] if kind == "chat" else r.json())
            for (kind, _, _), r in zip(requests, replies, strict=True)
            if r.status_code == 200
        ]
        codes = [r.status_code for r in replies]
        assert codes.count(200) >= len(requests) - 3, f"{codes}\n{server.log_tail()}"
        # Readable while the server is still writing: the lines arrive without a restart.
        assert _wait_for_lines(directory, len(answered)) == len(answered)
        counters = _scrape(server)
        server.stop()
        assert server.process.returncode is not None
        yield Recorded(directory, answered, len(requests), counters)
    finally:
        server.stop()


def test_under_load_every_answered_request_is_recorded(recorded: Recorded) -> None:
    records = list(read_records(recorded.directory))
    assert len(records) == len(recorded.answered)
    assert sorted(r.id for r in records) == sorted(a["id"] for _, a in recorded.answered)
    assert recorded.counters["bestofk_records_written_total"] == len(records)
    dropped = {k: v for k, v in recorded.counters.items() if "dropped" in k and v}
    assert not dropped, dropped
    by_id = {r.id: r for r in records}
    for kind, reply in recorded.answered:
        rec = by_id[reply["id"]]
        assert rec.profile == ("digits" if kind == "digits" else None)
        assert rec.source == ("verify" if kind == "verify" else "generate")
        assert rec.selection.chosen == reply["index"]
        assert rec.stats.first_sample_passed == reply["stats"]["first_sample_passed"]
        if reply.get("candidates"):
            assert [c.text for c in rec.candidates] == [c["text"] for c in reply["candidates"]]
            assert [c.passed for c in rec.candidates] == [c["passed"] for c in reply["candidates"]]
    sources = {r.source for r in records}
    assert sources == {"generate", "verify"}
    assert {r.profile for r in records} == {None, "digits"}
    assert any(r.is_chat for r in records) and any(not r.is_chat for r in records)
    redacted = [r for r in records if r.prompt and "[REDACTED]" in r.prompt]
    assert len(redacted) == 1 and "secret-42" not in redacted[0].prompt  # type: ignore[operator]


def _bestofk(*args: str) -> subprocess.CompletedProcess[str]:
    out = subprocess.run([str(VENV_BIN / "bestofk"), *args], capture_output=True, text=True,
                         timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    return out


def test_export_from_served_records_loads_and_pairs_pass_against_fail(
    recorded: Recorded, tmp_path: Path
) -> None:
    records = list(read_records(recorded.directory))
    verdict = {}  # (prompt as JSON, completion) → passed, as recorded
    for r in records:
        prompt = json.dumps(r.messages if r.is_chat else r.prompt)
        for c in r.candidates:
            verdict[prompt, c.text] = c.passed

    def text(completion: Any) -> str:
        return completion if isinstance(completion, str) else completion[0]["content"]

    for only in ("text", "chat"):
        out = tmp_path / f"dpo-{only}.jsonl"
        _bestofk("export", str(recorded.directory), "--format", "dpo", "--only", only,
                 "--out", str(out), "--max-pairs", "2")  # fmt: skip
        data = load_dataset(out, tmp_path / "hf")
        assert data.column_names == ["prompt", "chosen", "rejected"]
        assert len(data) >= 2
        for row in data:
            prompt = json.dumps(row["prompt"])
            assert verdict[prompt, text(row["chosen"])] is True
            assert verdict[prompt, text(row["rejected"])] is False
            if only == "chat":
                assert row["chosen"][0]["role"] == "assistant"
        per_prompt: dict[str, int] = {}
        for row in data:
            per_prompt[json.dumps(row["prompt"])] = per_prompt.get(json.dumps(row["prompt"]), 0) + 1
        assert max(per_prompt.values()) <= 2
    for fmt, columns in (("rsft", ["prompt", "completion"]),
                         ("kto", ["prompt", "completion", "label"])):  # fmt: skip
        out = tmp_path / f"{fmt}.jsonl"
        _bestofk("export", str(recorded.directory), "--format", fmt, "--only", "text",
                 "--out", str(out))  # fmt: skip
        data = load_dataset(out, tmp_path / "hf")
        assert data.column_names == columns and len(data) >= 4
        for row in data:
            expected = row.get("label", True)
            assert verdict[json.dumps(row["prompt"]), row["completion"]] is expected
        if fmt == "kto":
            assert set(data["label"]) == {True, False}


def test_stats_from_served_records(recorded: Recorded, tmp_path: Path) -> None:
    report = json.loads(_bestofk("stats", str(recorded.directory), "--json", "-").stdout)
    rows = {(r["profile"], r["verifier"]): r for r in report["rows"]}
    digits = [a for kind, a in recorded.answered if kind == "digits"]
    assert rows["digits", "all"]["requests"] == len(digits)
    assert rows["digits", "all"]["mean_k"] == 4  # the profile's k
    assert ("digits", "regex") in rows
    adhoc = [a for kind, a in recorded.answered if kind != "digits"]
    row = rows["-", "all"]
    assert row["requests"] == len(adhoc)
    first = sum(a["stats"]["first_sample_passed"] for a in adhoc) / len(adhoc)
    anyp = sum(a["stats"]["passing"] > 0 for a in adhoc) / len(adhoc)
    assert row["pass_at_1"] == pytest.approx(first) and row["pass_at_k"] == pytest.approx(anyp)
    assert row["lift"] == pytest.approx(anyp - first) and row["lift"] > 0
    assert ("-", "exact") in rows
    table = _bestofk("stats", str(recorded.directory), "--source", "verify")
    assert "pass@1" in table.stdout and "should pay" in table.stdout


# ---------------------------------------------------------------------------------------------
# SIGKILL mid-write


def test_kill_9_mid_write_leaves_only_complete_lines(vllm_backend: Server, tmp_path: Path) -> None:
    directory = tmp_path / "records"
    env = engine_env(BESTOFK_CONFIG=str(CONFIG), BESTOFK_RECORD_MAX_BYTES="300000")
    server = start_bestofk(
        tmp_path / "bestofk.log", "--backend", vllm_backend.url, "--record-dir", str(directory),
        env=env,
    )  # fmt: skip
    try:
        server.wait_ready(60)
        # Big records (16 candidates of 3 kB: ~60 kB a line) keep the writer busy mid-burst.
        body = {"prompt": "p", "candidates": [f"{i} " + "x" * 3000 for i in range(16)],
                "verifiers": [{"type": "regex", "pattern": "^1 "}]}  # fmt: skip
        answered: list[int] = []  # list.append is atomic across threads; += on an int is not
        done = threading.Event()

        def burst() -> None:
            with httpx.Client(timeout=30) as client:
                while not done.is_set():
                    try:
                        if client.post(server.url + "/verify", json=body).status_code == 200:
                            answered.append(1)
                    except httpx.HTTPError:
                        return

        threads = [threading.Thread(target=burst) for _ in range(8)]
        for t in threads:
            t.start()
        # The writer runs behind the responses by design (a bounded queue, off the request
        # path), and on a loaded machine far behind: kill once it has rotated at least once and
        # written a good share, so the test does not depend on how fast the writer thread runs.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (
            len(answered) >= 60 and _written_enough(directory)
        ):
            time.sleep(0.01)
        os.killpg(server.process.pid, signal.SIGKILL)  # while 8 clients are mid-request
        server.process.wait(10)
        done.set()
        for t in threads:
            t.join(10)
    finally:
        server.stop()
    assert len(answered) >= 60, server.log_tail()
    files = record_files(directory)
    assert len(files) > 1, "expected rotation at 300 kB"
    records = list(read_records(directory))  # raises on any broken complete line
    assert len(records) >= 30, f"only {len(records)} of {len(answered)} answered were written"
    # A record is queued before its response is sent, so at most the 8 in flight go beyond it.
    assert len(records) <= len(answered) + 8
    assert all(len(r.candidates) == 16 for r in records)
    # A torn last write (a kill inside write(), or a crash before the page reached disk) leaves
    # part of a line at the end: readers see the file up to its last complete line.
    last = files[-1]
    data = last.read_bytes()
    complete = data.count(b"\n")
    last.write_bytes(data + data[: len(data) // 3 if complete <= 1 else data.index(b"\n") // 2])
    assert len(list(read_records(directory))) == len(records)
    _bestofk("stats", str(directory))


def _written_enough(directory: Path) -> bool:
    """At least one rotation and 30 complete lines (the writer may be mid-line in the last)."""
    files = record_files(directory) if directory.is_dir() else []
    return len(files) > 1 and sum(1 for file in files for _ in complete_lines(file)) >= 30
