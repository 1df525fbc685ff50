"""Reasoning models: vLLM's parsers split each candidate; verifiers see the answer.

Without the demo model's thinking tokens, these tests build a tokenizer that has them (the demo
tokenizer plus ``<think>``/``</think>`` as added tokens, as DeepSeek-R1's are) and check the
split with vLLM's own parser classes, the pipeline with a scripted engine, and the remote
engine over the scripted backend (:mod:`bestofk.tooling.fake_backend`'s ``think`` modes) with
the official ``openai`` client, streamed and not.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from pydantic import ValidationError

from bestofk.service.engines.base import EngineHealth, Prompt, SamplingConfig
from bestofk.service.metrics import Metrics
from bestofk.service.pipeline import Pipeline
from bestofk.service.reasoning import ReasoningParsers, tokenizer_loader
from bestofk.service.rerank import RerankJob
from bestofk.service.settings import Settings
from bestofk.tooling.fake_backend import THOUGHT
from bestofk.tooling.procs import ROOT, VENV_BIN, Server, engine_env, start_bestofk
from bestofk.verifiers.base import Candidate, VerifierResources
from bestofk.verifiers.registry import parse_spec
from tests.conftest import post

DEMO = ROOT / "demo" / "model"


def think_tokenizer(directory: Path) -> Path:
    """The demo model's tokenizer with ``<think>`` and ``</think>`` added (not special: vLLM's
    detokenizer skips special tokens, and the parser reads the text)."""
    from tokenizers import AddedToken, Tokenizer

    directory.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer_config.json", "config.json"):
        shutil.copy(DEMO / name, directory / name)
    tokenizer = Tokenizer.from_file(str(DEMO / "tokenizer.json"))
    tokenizer.add_tokens(
        [AddedToken(t, special=False, normalized=False) for t in ("<think>", "</think>")]
    )
    tokenizer.save(str(directory / "tokenizer.json"))
    return directory


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tokenizer with DeepSeek-R1's thinking markers."""
    return think_tokenizer(tmp_path_factory.mktemp("think-tokenizer"))


def plain_tokenizer(directory: Path) -> Path:
    """The demo model's tokenizer without the thinking markers (a model that cannot think)."""
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(DEMO / "tokenizer_config.json", directory / "tokenizer_config.json")
    raw = json.loads((DEMO / "tokenizer.json").read_text())
    markers = {"<think>", "</think>"}
    raw["added_tokens"] = [t for t in raw["added_tokens"] if t["content"] not in markers]
    raw["model"]["vocab"] = {k: v for k, v in raw["model"]["vocab"].items() if k not in markers}
    (directory / "tokenizer.json").write_text(json.dumps(raw))
    return directory


@pytest.fixture(scope="module")
def no_markers(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tokenizer without DeepSeek-R1's thinking markers."""
    return plain_tokenizer(tmp_path_factory.mktemp("plain-tokenizer"))


@pytest.fixture(scope="module")
def parsers(tokenizer_dir: Path) -> ReasoningParsers:
    return ReasoningParsers(tokenizer_loader(str(tokenizer_dir)))


@pytest.mark.parametrize(
    ("output", "reasoning", "answer"),
    [
        ("<think>5! is 120</think>120", "5! is 120", "120"),
        ("5! is 120</think>120", "5! is 120", "120"),  # the template opened the thinking
        ("<think>5! is 120</think>", "5! is 120", None),  # nothing after: no answer
        ("<think>5! is 1", "5! is 1", None),  # cut before the end marker
        ("120", "120", None),  # R1's rule: no end marker, all of it is thinking
    ],
)
def test_deepseek_r1_splits_as_vllm_does(
    parsers: ReasoningParsers, output: str, reasoning: str, answer: str | None
) -> None:
    split = parsers.split("deepseek_r1", output, 12, None)
    assert (split.reasoning, split.answer) == (reasoning, answer)
    # The thinking's tokens: all of them when there is no answer.
    assert split.reasoning_tokens == (12 if answer is None else 11)


def test_qwen3_reads_an_output_without_thinking_as_answer(parsers: ReasoningParsers) -> None:
    assert parsers.split("qwen3", "<think>a</think>120", 4, None).answer == "120"
    split = parsers.split("qwen3", "120", 1, {"enable_thinking": False})
    assert (split.reasoning, split.answer) == (None, "120")


def test_a_tokenizer_without_the_markers_is_refused(no_markers: Path) -> None:
    demo = ReasoningParsers(tokenizer_loader(str(no_markers)))
    with pytest.raises(TypeError, match="--reasoning-parser deepseek_r1 cannot be used"):
        demo.check("deepseek_r1")


def test_unknown_parser_names_list_vllms() -> None:
    with pytest.raises(ValidationError, match=r"unknown reasoning parser 'r1'.*deepseek_r1"):
        Settings(reasoning_parser="r1")
    with pytest.raises(ValidationError, match=r"profiles\.math\.reasoning_parser"):
        Settings(profiles={"math": {"reasoning_parser": "nope"}})


def test_serve_refuses_an_unknown_parser_in_one_line(tmp_path: Path) -> None:
    run = subprocess.run(
        [str(VENV_BIN / "bestofk"), "serve", "--reasoning-parser", "r1", "--port", "1"],
        capture_output=True,
        text=True,
        env=engine_env(),
        timeout=120,
    )
    assert run.returncode == 1
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert "unknown reasoning parser 'r1'" in lines[0] and "deepseek_r1" in lines[0]


def test_serve_refuses_a_parser_the_tokenizer_cannot_read(no_markers: Path) -> None:
    run = subprocess.run(
        [
            *(str(VENV_BIN / "bestofk"), "serve", "--reasoning-parser", "deepseek_r1"),
            *("--tokenizer", str(no_markers)),
        ],
        capture_output=True,
        text=True,
        env=engine_env(BESTOFK_PORT="0"),
        timeout=120,
    )
    assert run.returncode == 1
    assert "could not locate think start/end tokens" in run.stderr.strip().splitlines()[-1]


def test_serve_over_backends_needs_a_tokenizer() -> None:
    run = subprocess.run(
        [
            *(str(VENV_BIN / "bestofk"), "serve", "--backend", "http://127.0.0.1:9"),
            *("--reasoning-parser", "deepseek_r1"),
        ],
        capture_output=True,
        text=True,
        env=engine_env(BESTOFK_PORT="0"),
        timeout=120,
    )
    assert run.returncode == 1
    (line,) = run.stderr.strip().splitlines()
    assert "need the model's tokenizer" in line and "--tokenizer" in line


# --- the pipeline, with a scripted engine ---------------------------------------------------


class _Stream:
    def __init__(self, samples: Sequence[Candidate]) -> None:
        self.prompt_tokens = 3
        self.completion_tokens = sum(s.tokens for s in samples)
        self._gen = self._run(samples)

    def __aiter__(self) -> AsyncIterator[Candidate]:
        return self._gen

    async def aclose(self) -> None:
        await self._gen.aclose()

    @staticmethod
    async def _run(samples: Sequence[Candidate]) -> AsyncGenerator[Candidate, None]:
        for sample in samples:
            yield sample


class _Engine:
    model_name = "scripted"
    health = EngineHealth("ready")

    def __init__(self, samples: Sequence[Candidate]) -> None:
        self.samples = samples

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    def sample(
        self,
        prompt: Prompt,
        k: int,
        sampling: SamplingConfig,
        request_id: str,
        first_index: int = 0,
        watch: object = None,
    ) -> _Stream:
        return _Stream(self.samples[first_index : first_index + k])


OUTPUTS = [
    Candidate(0, "<think>4! is 24</think>24", "stop", 8),
    Candidate(1, "<think>5! is 120</think>120", "stop", 8),
    Candidate(2, "<think>5! is 120, so", "length", 8),  # cut by max_tokens
    Candidate(3, "<think>5! = 120</think>The answer is \\boxed{120}.", "stop", 12),
]


async def run_job(parsers: ReasoningParsers, specs: list[dict[str, Any]], **kw: Any) -> Any:
    pipeline = Pipeline(_Engine(OUTPUTS), VerifierResources(), parsers)
    job = RerankJob(
        request_id="r",
        prompt=Prompt(text="What's 5!?"),
        k=len(OUTPUTS),
        sampling=SamplingConfig(),
        specs=[parse_spec(s) for s in specs],
        reasoning_parser="deepseek_r1",
        **kw,
    )
    return await pipeline.run(job)


async def test_verifiers_see_the_answer_and_cut_thinking_fails_unseen(
    parsers: ReasoningParsers,
) -> None:
    result = await run_job(parsers, [{"type": "exact", "reference": "120"}])
    passed = [s.passed for s in result.candidates]
    assert passed == [False, True, False, False]
    assert result.chosen.candidate.index == 1
    cut = result.candidates[2]
    assert cut.candidate.truncated and cut.candidate.text == ""
    assert cut.verdicts[0].detail.startswith("no answer: the thinking was cut by max_tokens")
    assert cut.verdicts[0].error is None
    assert result.candidates[1].candidate.reasoning == "5! is 120"
    assert result.candidates[1].candidate.output == OUTPUTS[1].text
    metrics = Metrics()
    metrics.observe(result)
    assert metrics.value("bestofk_reasoning_truncated_total") == 1


async def test_input_full_and_reasoning(parsers: ReasoningParsers) -> None:
    specs = [
        {"type": "exact", "reference": "120", "input": "full"},
        {"type": "regex", "pattern": "120", "input": "reasoning"},
        {"type": "math", "reference": "120"},
    ]
    result = await run_job(parsers, specs)
    full, thought, math = zip(*(s.verdicts for s in result.candidates), strict=True)
    assert [v.passed for v in full] == [False] * 4  # the think block is part of the full text
    assert [v.passed for v in thought] == [False, True, True, True]  # the cut one thought too
    assert [v.passed for v in math] == [False, True, False, True]


async def test_vote_counts_only_answers(parsers: ReasoningParsers) -> None:
    from bestofk.service.selection import SelectionConfig

    result = await run_job(parsers, [{"type": "vote"}], selection=SelectionConfig(policy="vote"))
    votes = [s.verdicts[0] for s in result.candidates]
    assert [v.passed for v in votes] == [False, True, False, True]
    assert votes[2].detail.startswith("no answer")
    assert result.chosen.candidate.index in (1, 3)


# --- the remote engine over the scripted backend, through the official client ---------------


@pytest.fixture(scope="module")
def thinking_remote(
    fake_backend: Server, tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """bestofk with ``--reasoning-parser deepseek_r1`` in front of the scripted backend."""
    log = tmp_path_factory.mktemp("logs") / "thinking-remote.log"
    server = start_bestofk(
        log,
        "--backend",
        fake_backend.url,
        "--reasoning-parser",
        "deepseek_r1",
        "--tokenizer",
        str(tokenizer_dir),
    )
    try:
        server.wait_ready(120)
        yield server
    finally:
        server.stop()


def set_mode(backend: Server, mode: str) -> None:
    httpx.post(backend.url + "/control", json={"mode": mode}, timeout=10).raise_for_status()


def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


MESSAGES: Any = [{"role": "user", "content": "What is 6*7?"}]
EXACT = {"best_of": 2, "verifiers": [{"type": "exact", "reference": "42"}]}


@pytest.mark.parametrize("mode", ["think", "think_legacy", "think_inline"])
def test_remote_reasoning_is_kept_apart(
    thinking_remote: Server, fake_backend: Server, mode: str
) -> None:
    set_mode(fake_backend, mode)
    try:
        reply = client(thinking_remote).chat.completions.create(
            model="demo", messages=MESSAGES, extra_body=EXACT
        )
    finally:
        set_mode(fake_backend, "ok")
    message = reply.choices[0].message
    assert message.content == "42"
    # Field for field what vLLM's own server sends for this output.
    from vllm.entrypoints.openai.chat_completion.protocol import ChatMessage

    theirs = ChatMessage(role="assistant", content="42", reasoning="".join(THOUGHT)).model_dump()
    ours = message.model_dump(exclude_none=True)
    assert ours.items() <= theirs.items(), (ours, theirs)
    assert message.model_extra is not None and message.model_extra["reasoning"] == "".join(THOUGHT)
    native = reply.model_extra["bestofk"] if reply.model_extra else {}
    assert native["passed"] and native["reasoning"] == "".join(THOUGHT)
    usage = reply.usage.model_dump() if reply.usage else {}
    assert usage["completion_tokens_details"]["reasoning_tokens"] > 0


def test_remote_reasoning_streams_before_the_answer(
    thinking_remote: Server, fake_backend: Server
) -> None:
    set_mode(fake_backend, "think")
    try:
        chunks = list(
            client(thinking_remote).chat.completions.create(
                model="demo", messages=MESSAGES, stream=True, extra_body=EXACT
            )
        )
    finally:
        set_mode(fake_backend, "ok")
    fields = [
        (name, value)
        for chunk in chunks
        for choice in chunk.choices
        for name, value in (choice.delta.model_dump(exclude_none=True) | {}).items()
        if name in ("reasoning", "content")
    ]
    reasoning = "".join(v for n, v in fields if n == "reasoning")
    content = "".join(v for n, v in fields if n == "content")
    assert (reasoning, content) == ("".join(THOUGHT), "42")
    first_content = next(i for i, (n, _) in enumerate(fields) if n == "content")
    assert all(n == "reasoning" for n, _ in fields[:first_content])


def test_remote_cut_thinking_has_no_answer(thinking_remote: Server, fake_backend: Server) -> None:
    set_mode(fake_backend, "think_cut")
    try:
        reply = httpx.post(
            thinking_remote.url + "/generate",
            json={
                "prompt": "What is 6*7?",
                "k": 2,
                "verifiers": [{"type": "exact", "reference": "42"}],
            },
            timeout=60,
        )
        text = httpx.post(
            thinking_remote.url + "/v1/completions",
            json={"model": "demo", "prompt": "What is 6*7?", "best_of": 1},
            timeout=60,
        )
    finally:
        set_mode(fake_backend, "ok")
    body = reply.json()
    assert reply.status_code == 200, body
    assert not body["passed"] and body["text"] == ""
    verdict = body["candidates"][0]["verdicts"][0]
    assert verdict["detail"].startswith("no answer: the thinking was cut by max_tokens")
    # /v1/completions splits nothing, as vLLM's: the whole output is the text.
    assert text.json()["choices"][0]["text"] == "<think>" + "".join(THOUGHT)
    scrape = httpx.get(thinking_remote.url + "/metrics", timeout=10).text
    line = next(
        ln for ln in scrape.splitlines() if ln.startswith("bestofk_reasoning_truncated_total")
    )
    assert float(line.split()[-1]) >= 2


def test_records_and_export_carry_the_reasoning() -> None:
    from bestofk.service.records.format import Record
    from bestofk.tooling.records.export import ExportOptions, export

    raw = {
        "version": 1,
        "id": "r",
        "timestamp": "2026-01-01T00:00:00+00:00",
        "model": "demo",
        "source": "generate",
        "prompt": "What's 5!?",
        "messages": None,
        "profile": None,
        "verifiers": [{"type": "exact", "reference": "120"}],
        "selection": {"policy": "argmax", "chosen": 1},
        "stats": {"k": 2, "generated": 2, "passing": 1, "first_sample_passed": False,
                  "early_exit": False, "partial": False},
        "candidates": [
            {"index": i, "text": a, "reasoning": r, "output": f"<think>{r}</think>{a}",
             "score": float(a == "120"), "passed": a == "120",
             "verdicts": [{"verifier": "exact", "score": float(a == "120"),
                           "passed": a == "120"}]}
            for i, (r, a) in enumerate([("4! is 24", "24"), ("5! is 120", "120")])
        ],
    }  # fmt: skip
    record = Record.from_json(json.dumps(raw).encode())
    assert record.candidates[1].reasoning == "5! is 120"
    (row,) = export([record], ExportOptions(format="dpo")).rows
    assert row["chosen"] == "<think>5! is 120</think>120"
    assert row["rejected"] == "<think>4! is 24</think>24"


# --- real vLLM (the demo model's think and math families), both engines ---------------------

THINK_PROMPT = "What is 5!? Think it through first, then answer with the number only."
MATH_PROMPT = "What is 1/2 + 1/4? Give the final answer in LaTeX."
SAMPLING = {"temperature": 1.0, "max_tokens": 64, "seed": 7}


def test_the_think_profile_splits_each_candidate(any_server: Server) -> None:
    exact = {"type": "exact", "reference": "120"}
    reply = post(
        any_server,
        "/generate",
        {
            "prompt": THINK_PROMPT,
            "profile": "think",
            "k": 8,
            "sampling": SAMPLING,
            "verifiers": [exact, {**exact, "input": "full"}],
        },
    )
    assert reply.status_code == 200, reply.text
    body = reply.json()
    candidates = body["candidates"]
    assert all(c["reasoning"] for c in candidates), candidates
    for c in candidates:
        answer, full = c["verdicts"]
        assert not full["passed"]  # the think block is part of the full text
        assert "<think>" not in c["text"] and "</think>" not in c["text"]
        if c["text"] == "":
            assert answer["detail"].startswith("no answer"), answer
        assert c["reasoning_tokens"] > 0
        if c["text"]:
            assert c["reasoning_tokens"] < c["tokens"]
    assert any(c["verdicts"][0]["passed"] for c in candidates)
    assert body["passed"] is False  # passing means every verifier, and "full" never does
    assert body["usage"]["reasoning_tokens"] == sum(c["reasoning_tokens"] for c in candidates)


def test_message_reasoning_streamed_and_not(any_server: Server) -> None:
    extra = {"best_of": 8, "verifiers": [{"type": "exact", "reference": "120"}]}
    seeded = {"seed": 11, "temperature": 1.0, "max_tokens": 64}
    messages: Any = [{"role": "user", "content": THINK_PROMPT}]
    whole = client(any_server).chat.completions.create(
        model="demo@think", messages=messages, extra_body=extra, **seeded
    )
    message = whole.choices[0].message
    reasoning = (message.model_extra or {}).get("reasoning")
    assert reasoning and "</think>" not in reasoning
    native = (whole.model_extra or {})["bestofk"]
    assert message.content == (native["text"] or None)
    assert native["reasoning"] == reasoning
    usage = whole.usage.model_dump() if whole.usage else {}
    assert usage["completion_tokens_details"]["reasoning_tokens"] > 0
    chunks = list(
        client(any_server).chat.completions.create(
            model="demo@think", messages=messages, extra_body=extra, stream=True, **seeded
        )
    )
    deltas = [c.choices[0].delta.model_dump(exclude_none=True) for c in chunks if c.choices]
    streamed = "".join(d.get("reasoning", "") for d in deltas)
    content = "".join(d.get("content", "") for d in deltas)
    assert (streamed, content) == (reasoning, message.content or "")
    kinds = [k for d in deltas for k in ("reasoning", "content") if d.get(k)]
    assert kinds == sorted(kinds, key=lambda k: k == "content")  # all reasoning first


def test_thinking_cut_by_max_tokens_fails_unseen(any_server: Server) -> None:
    def truncated() -> float:
        scrape = httpx.get(any_server.url + "/metrics", timeout=10).text
        name = "bestofk_reasoning_truncated_total"
        (line,) = [ln for ln in scrape.splitlines() if ln.startswith(name)]
        return float(line.split()[-1])

    before = truncated()
    reply = post(
        any_server,
        "/generate",
        {
            "prompt": THINK_PROMPT,
            "profile": "think",
            "k": 4,
            "sampling": {**SAMPLING, "max_tokens": 3},
            "verifiers": [{"type": "math", "reference": "120"}],
        },
    )
    body = reply.json()
    assert reply.status_code == 200, body
    cut = [c for c in body["candidates"] if c["finish_reason"] == "length" and not c["text"]]
    assert len(cut) == 4, body["candidates"]
    for c in cut:
        verdict = c["verdicts"][0]
        assert verdict["detail"].startswith("no answer: the thinking was cut by max_tokens")
        assert verdict["error"] is None and verdict["latency_ms"] == 0.0
    assert truncated() == before + 4


def test_math_and_vote_cluster_latex_forms(any_server: Server) -> None:
    reply = post(
        any_server,
        "/generate",
        {
            "prompt": MATH_PROMPT,
            "k": 16,
            "sampling": SAMPLING,
            "verifiers": [{"type": "math", "reference": "\\frac{3}{4}"}, {"type": "vote"}],
            "selection": {"policy": "vote"},
        },
    )
    assert reply.status_code == 200, reply.text
    candidates = reply.json()["candidates"]
    right = [c for c in candidates if c["verdicts"][0]["passed"]]
    assert len({c["text"] for c in right}) >= 2, [c["text"] for c in candidates]  # two forms
    clusters = {c["verdicts"][1]["detail"].rsplit(":", 1)[0] for c in right}
    assert len(clusters) == 1, clusters  # one vote cluster for every form of 3/4
    wrong = [c for c in candidates if not c["verdicts"][0]["passed"]]
    assert wrong, "the demo's math family samples near misses too"
    assert not {c["verdicts"][1]["detail"].rsplit(":", 1)[0] for c in wrong} & clusters


def test_records_and_export_of_a_thinking_request(server: Server, server_records: Path) -> None:
    import time

    from bestofk.service.records.reader import read_records
    from bestofk.tooling.records.export import ExportOptions, export

    reply = post(
        server,
        "/generate",
        {
            "prompt": THINK_PROMPT,
            "profile": "think",
            "k": 8,
            "sampling": SAMPLING,
            "verifiers": [{"type": "exact", "reference": "120"}],
        },
    )
    request_id = reply.json()["id"]
    for _ in range(50):
        records = [r for r in read_records(server_records) if r.id == request_id]
        if records:
            break
        time.sleep(0.2)
    (record,) = records
    for c in record.candidates:
        assert c.reasoning and c.output and c.output.startswith("<think>")
        assert c.output.endswith(c.text)
    rows = export([record], ExportOptions(format="dpo")).rows
    assert rows, "the seeded request has passing and failing candidates"
    for row in rows:
        assert row["chosen"].startswith("<think>") and "</think>" in row["chosen"]
        assert row["chosen"].endswith("120")


def test_include_reasoning_false_and_a_cut_stream(
    thinking_remote: Server, fake_backend: Server
) -> None:
    set_mode(fake_backend, "think")
    try:
        hidden = client(thinking_remote).chat.completions.create(
            model="demo", messages=MESSAGES, extra_body={**EXACT, "include_reasoning": False}
        )
        set_mode(fake_backend, "think_cut")
        chunks = list(
            client(thinking_remote).chat.completions.create(
                model="demo", messages=MESSAGES, stream=True, extra_body=EXACT
            )
        )
    finally:
        set_mode(fake_backend, "ok")
    message = hidden.choices[0].message
    assert message.content == "42" and (message.model_extra or {}).get("reasoning") is None
    assert (hidden.model_extra or {})["bestofk"]["reasoning"] == "".join(THOUGHT)  # kept
    deltas = [c.choices[0].delta.model_dump(exclude_none=True) for c in chunks if c.choices]
    assert "".join(d.get("reasoning", "") for d in deltas) == "".join(THOUGHT)
    assert not any("content" in d for d in deltas)  # no answer: no content at all
    assert chunks[-1].choices[0].finish_reason == "length"
