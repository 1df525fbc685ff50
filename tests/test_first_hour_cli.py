"""Issue 15, the CLI side: what a new user meets in the first hour with ``bestofk``.

One test (or a few) per finding: the CLI finds a running server, keeps engine logs off
stdout and says so when no verifier judged; talks to servers with API keys; ends every expected
failure in one line; ``export`` keeps /verify and judge-only records out of training data and
survives mixed prompt kinds; ``eval``'s best-of-k is exact (best-of-1 = pass@1, best-of-k <=
pass@k); ``serve`` takes vLLM's flag names; start-up errors come before the engine loads.
"""

from __future__ import annotations

import http.server
import itertools
import json
import math
import os
import random
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bestofk.service.cli import client, serve
from bestofk.service.records.format import Record
from bestofk.service.records.reader import read_records
from bestofk.service.selection import SelectionConfig, select
from bestofk.tooling.evaluation import (
    Report,
    Task,
    TaskSamples,
    best_of_k,
    pass_at_k,
    plot,
    subsets,
)
from bestofk.tooling.procs import (
    ROOT,
    VENV_BIN,
    Server,
    engine_env,
    free_port,
    running,
    start_bestofk,
)
from tests.conftest import CONFIG
from tests.test_records import record

PROMPT = "What's the factorial of 5? (Respond with a number only)"
KEY = "sk-first-hour"


def bestofk(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120, cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    """The installed ``bestofk`` console script, as a user runs it."""
    base = {k: v for k, v in os.environ.items() if k not in CLIENT_ENV}
    return subprocess.run(
        [str(VENV_BIN / "bestofk"), *args],
        capture_output=True, text=True, timeout=timeout, env={**base, **(env or {})}, cwd=cwd,
    )  # fmt: skip


CLIENT_ENV = ("BESTOFK_URL", "BESTOFK_API_KEY", "OPENAI_API_KEY")


def one_line_error(run: subprocess.CompletedProcess[str], *needles: str) -> str:
    """The run failed with exactly one ``bestofk: error:`` line on stderr, and no traceback."""
    assert run.returncode == 1, run.stdout + run.stderr
    assert "Traceback" not in run.stderr + run.stdout, run.stderr
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("bestofk: error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], run.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


# ---------------------------------------------------------------------------------------------
# 3. generate: a running server first, engine logs off stdout, an honest no-verifier table


def test_generate_uses_the_server_in_bestofk_url_and_says_when_nothing_verified(
    server: Server,
) -> None:
    run = bestofk("generate", PROMPT, "--k", "4", "--max-tokens", "16",
                  env={"BESTOFK_URL": server.url})  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "loading" not in run.stderr  # no engine of its own
    assert "4 candidates" in run.stdout
    # No verifier: no pass/fail column full of "no", and the footer says how it chose.
    assert "passed" not in run.stdout and not any(
        cell.strip() == "no" for line in run.stdout.splitlines() for cell in line.split("│")
    )
    assert "no verifier" in run.stdout and "mean logprob" in run.stdout
    exact = ("--verifier", "exact:reference=120")
    judged = bestofk("generate", PROMPT, "--k", "4", "--max-tokens", "16", *exact,
                     env={"BESTOFK_URL": server.url})  # fmt: skip
    assert judged.returncode == 0, judged.stderr
    assert "passed" in judged.stdout and "no verifier" not in judged.stdout


@pytest.fixture
def loopback_http() -> Iterator[str]:
    """Something answering HTTP on a free loopback port (a stand-in for a running server)."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_the_default_address_is_used_when_something_answers_there(
    loopback_http: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client, "DEFAULT_URL", loopback_http)
    assert client.server_url(None, None) == loopback_http
    assert client.server_url(None, "demo/model") is None  # --model: in-process, as asked
    assert client.server_url("http://elsewhere:9/", None) == "http://elsewhere:9"
    monkeypatch.setattr(client, "DEFAULT_URL", f"http://127.0.0.1:{free_port()}")
    assert client.server_url(None, None) is None  # nobody there: load the model in-process


def test_in_process_generate_keeps_engine_logs_off_stdout(tmp_path: Path) -> None:
    """Without a server the engine loads in-process; its logs (vLLM's and its engine core
    process's) go to stderr, so stdout is the table alone."""
    run = bestofk("generate", PROMPT, "--k", "3", "--max-tokens", "8", "--model",
                  str(ROOT / "demo" / "model"), env=engine_env(VLLM_LOGGING_LEVEL="INFO"),
                  timeout=600)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert "INFO" in run.stderr  # the logs exist, just not on stdout
    lines = [line for line in run.stdout.splitlines() if line.strip()]
    assert lines and "3 candidates" in lines[0], run.stdout[:2000]
    assert not any("INFO" in line or "WARNING" in line for line in lines), run.stdout[:2000]


# ---------------------------------------------------------------------------------------------
# 5. API keys, and one clear line for every expected failure


@pytest.fixture(scope="module")
def keyed_server(
    vllm_backend: Server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """bestofk over the session's vLLM server, keyed with vLLM's flag name, --api-key."""
    log = tmp_path_factory.mktemp("logs") / "bestofk-keyed.log"
    env = engine_env(BESTOFK_CONFIG=str(CONFIG))
    server = start_bestofk(log, "--backend", vllm_backend.url, "--api-key", KEY, env=env)
    with running(server, 120):
        yield server


def test_generate_and_eval_send_the_api_key_from_the_flag_or_the_env(
    keyed_server: Server, tmp_path: Path
) -> None:
    args = ("generate", PROMPT, "--k", "2", "--max-tokens", "8", "--url", keyed_server.url)
    assert bestofk(*args, "--api-key", KEY).returncode == 0
    for name in ("BESTOFK_API_KEY", "OPENAI_API_KEY"):
        run = bestofk(*args, env={name: KEY})
        assert run.returncode == 0, (name, run.stderr)
    one_line_error(bestofk(*args), "401", "--api-key")
    tasks = tmp_path / "tasks.jsonl"
    factorial = next(line for line in (ROOT / "demo" / "tasks.jsonl").read_text().splitlines()
                     if '"factorial"' in line)  # fmt: skip
    tasks.write_text(factorial + "\n")
    eval_args = ("eval", str(tasks), "--k", "1,2", "--url", keyed_server.url, "--max-tokens", "8")
    one_line_error(bestofk(*eval_args), "401", "--api-key")
    run = bestofk(*eval_args, env={"BESTOFK_API_KEY": KEY})
    assert run.returncode == 0, run.stderr


def test_generate_and_eval_send_no_sampling_defaults_of_their_own(
    vllm_backend: Server, tmp_path: Path
) -> None:
    """What the commands leave out is the server's: its sampling and max_tokens defaults are
    what the recorded requests were sampled with, and eval asks for its selection."""
    records = tmp_path / "records"
    env = engine_env(
        BESTOFK_CONFIG=str(CONFIG), BESTOFK_SAMPLING__TEMPERATURE="0.37",
        BESTOFK_SAMPLING__TOP_K="7", BESTOFK_DEFAULT_MAX_TOKENS="5",
        BESTOFK_SELECTION__BETA="2.5",
    )  # fmt: skip
    server = start_bestofk(tmp_path / "bestofk.log", "--backend", vllm_backend.url,
                           "--record-dir", str(records), env=env)  # fmt: skip
    with running(server, 120):
        assert bestofk("generate", PROMPT, "--k", "2", "--url", server.url).returncode == 0
        tasks = tmp_path / "tasks.jsonl"
        factorial = next(line for line in (ROOT / "demo" / "tasks.jsonl").read_text().splitlines()
                         if '"factorial"' in line)  # fmt: skip
        tasks.write_text(factorial + "\n")
        run = bestofk("eval", str(tasks), "--k", "1,2", "--url", server.url)
        assert run.returncode == 0, run.stderr
        models = httpx.get(server.url + "/v1/models", timeout=10).json()["data"]
        assert models[0]["default_selection"] == {
            "policy": "argmax", "beta": 2.5, "tie_break": "index",
        }  # fmt: skip
        server.stop()  # a graceful stop writes every record
    sampled = [r.sampling for r in read_records(records)]
    assert len(sampled) == 2, sampled
    for sampling in sampled:
        assert sampling is not None
        assert (sampling["temperature"], sampling["top_k"], sampling["max_tokens"]) == (
            0.37, 7, 5,
        ), sampling  # fmt: skip
        assert sampling["seed"] is None  # eval seeds only when asked (--seed)


def test_expected_failures_end_in_one_line(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    one_line_error(bestofk("generate", PROMPT, "--url", dead), "cannot connect", dead)
    one_line_error(bestofk("eval", str(ROOT / "demo" / "tasks.jsonl"), "--url", dead),
                   "cannot connect")  # fmt: skip
    one_line_error(bestofk("eval", str(tmp_path / "missing.jsonl"), "--url", dead),
                   "missing.jsonl")  # fmt: skip
    broken = tmp_path / "tasks.jsonl"
    broken.write_text('{"id": "a", "family": "f", "prompt": "p", "verifiers": []}\n{"id": \n')
    one_line_error(bestofk("eval", str(broken), "--url", dead), "line 2")
    one_line_error(bestofk("stats", str(tmp_path / "nothing")), "nothing")
    one_line_error(bestofk("export", str(tmp_path / "nothing"), "--format", "dpo", "--out",
                           str(tmp_path / "x.jsonl")))  # fmt: skip


# ---------------------------------------------------------------------------------------------
# 6. export: only the model's own samples, filters, both prompt kinds


def _write(records: list[Record], path: Path) -> Path:
    path.write_bytes(b"".join(r.to_line() for r in records))
    return path


def _export(records: Path, tmp_path: Path, *args: str) -> list[dict[str, Any]]:
    out = tmp_path / "out.jsonl"
    run = bestofk("export", str(records), "--format", "dpo", "--out", str(out), *args)
    assert run.returncode == 0, run.stderr
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_export_leaves_out_verify_records_judge_only_records_and_other_profiles(
    tmp_path: Path,
) -> None:
    sampled = record("4!?", ("24", True, 1.0), ("25", False, 0.0))
    given = record("5!?", ("120", True, 1.0), ("24", False, 0.0)).model_copy(
        update={"source": "verify"}
    )
    judged = record("6!?", ("720", True, 1.0), ("719", False, 0.0)).model_copy(
        update={"verifiers": [{"type": "judge"}], "profile": "noisy"}
    )
    chat = record([{"role": "user", "content": "3!?"}], ("6", True, 1.0), ("5", False, 0.0))
    path = _write([sampled, given, judged, chat], tmp_path / "records.jsonl")

    def prompts(*args: str) -> set[str]:
        return {json.dumps(row["prompt"]) for row in _export(path, tmp_path, *args)}

    # /verify candidates never were the model's samples: out unless asked for.
    assert prompts() == {'"4!?"', '"6!?"'}  # text outnumbers chat: the chat one is counted
    assert prompts("--source", "all") == {'"4!?"', '"5!?"', '"6!?"'}
    assert prompts("--source", "verify") == {'"5!?"'}
    # Judge-only records stay out once the verifiers that count are named.
    assert prompts("--verifier", "exact") == {'"4!?"'}
    assert prompts("--profile", "noisy") == {'"6!?"'}
    assert prompts("--profile", "-") == {'"4!?"'}
    assert prompts("--only", "chat") == {json.dumps([{"role": "user", "content": "3!?"}])}
    run = bestofk("export", str(path), "--format", "dpo", "--out", str(tmp_path / "o.jsonl"))
    assert (
        "1 with chat prompts (--only chat" in run.stdout and "1 of another --source" in run.stdout
    )


# ---------------------------------------------------------------------------------------------
# 8. eval: exact best-of-k


def _samples(correct: list[bool], rng: random.Random) -> TaskSamples:
    n = len(correct)
    texts = [rng.choice(["120", "24", "121", "The answer is 120."]) for _ in range(n)]
    scores = [rng.choice([0.0, 0.5, 1.0]) for _ in range(n)]
    return TaskSamples(
        task=Task("t", "f", "p", []),
        texts=texts,
        correct=correct,
        signal_scores={"verifiers": scores, "none": [0.0] * n},
        required_ok=[rng.random() < 0.8 for _ in range(n)],
        mean_logprobs=[rng.choice([None, -0.1, -0.5, -1.0]) for _ in range(n)],
        tokens=[3] * n,
        latency_ms=1.0,
    )


def test_best_of_k_is_exact_best_of_1_is_pass_at_1_and_never_above_pass_at_k() -> None:
    """Every correctness pattern of up to 6 samples, random scores and ties: the invariants
    hold exactly, and argmax's closed form agrees with running the selection on every subset."""
    rng = random.Random(0)
    for n in range(1, 7):
        for pattern in itertools.product([False, True], repeat=n):
            samples = _samples(list(pattern), rng)
            c = sum(pattern)
            for signal in ("verifiers", "none"):
                for policy in ("argmax", "sample", "vote"):
                    assert math.isclose(best_of_k(samples, 1, policy, signal), c / n)
                    for k in range(1, n + 2):
                        value = best_of_k(samples, k, policy, signal)
                        assert value <= pass_at_k(n, c, k) + 1e-12, (pattern, policy, k)
                for k in range(1, n + 1):
                    chosen = [
                        select(samples.pool(s, signal), SelectionConfig()).candidate.index
                        for s in subsets(n, k)
                    ]
                    enumerated = [samples.correct[i] for i in chosen]
                    exact = sum(enumerated) / len(enumerated)
                    assert math.isclose(best_of_k(samples, k, "argmax", signal), exact)
    assert pass_at_k(8, 0, 16) == 0.0  # k above n: all n samples, none correct


def test_eval_plot_is_a_grid_with_one_legend(tmp_path: Path) -> None:
    from PIL import Image

    families = ["factorial", "dates", "code", "summary", "judge", "all"]
    curve = {1: 0.4, 2: 0.6, 4: 0.8, 8: 0.9}
    report = Report(ks=[1, 2, 4, 8])
    for family in families:
        report.rows[family] = {
            "tasks": 5, "pass@1": 0.4, "pass@k": curve,
            "best_of_k": {"verifiers/argmax": curve, "none/vote": curve},
        }  # fmt: skip
    out = tmp_path / "eval.png"
    plot(report, out)
    with Image.open(out) as image:
        width, height = image.size
    assert width / height < 2.0, (width, height)  # a grid, not a 2772x418 strip


# ---------------------------------------------------------------------------------------------
# 9. vLLM's names for serve's flags, help without placeholders, bench's options


COMMANDS = ("serve", "generate", "eval", "bench", "export", "stats", "train")


def _description(help_text: str) -> list[list[str]]:
    """The paragraphs above the first panel of a ``--help``, as their rendered lines."""
    top = help_text.split("╭")[0].splitlines()
    paragraphs: list[list[str]] = [[]]
    for line in top[2:]:  # past the usage line
        if line.strip():
            paragraphs[-1].append(line.strip())
        elif paragraphs[-1]:
            paragraphs.append([])
    return [p for p in paragraphs if p]


@pytest.mark.parametrize("columns", [80, 120])
def test_help_reads_as_written_at_any_width(columns: int) -> None:
    """Issue 24: no type placeholders (the root's options too), no square brackets eaten as
    markup, and the docstrings' paragraphs refilled to the width instead of keeping their
    source line breaks ("…with its own\n in-process engine,\n then times…")."""
    for command in ("", *COMMANDS):
        run = bestofk(*filter(None, [command]), "--help", env={"COLUMNS": str(columns)})
        assert run.returncode == 0, run.stderr
        for placeholder in ("<str>", "<list[str]>", "<int>", "<bool>", "<path>", "<float>"):
            assert placeholder not in run.stdout, (command, placeholder)
        if command in ("", "train"):
            assert "'bestofk[train]'" in run.stdout, command
        # rich cuts a word longer than the help column with an ellipsis: unreadable.
        assert "…" not in run.stdout, (command, columns)
        for paragraph in _description(run.stdout):
            for line, after in itertools.pairwise(paragraph):
                # A line is broken early only if the next word would not have fit on it.
                assert len(line) + 1 + len(after.split()[0]) > columns - 4, (command, line)
    bench = " ".join(bestofk("bench", "--help", env={"COLUMNS": str(columns)}).stdout.split())
    assert "its own in-process engine, then times, interleaved: (a) direct n=1" in bench


def test_serve_takes_vllms_flag_names_and_help_has_no_type_placeholders() -> None:
    for command in COMMANDS:
        run = bestofk(command, "--help", env={"COLUMNS": "200"})
        assert run.returncode == 0, run.stderr
        for placeholder in ("<str>", "<list[str]>", "<int>", "<bool>", "<path>", "<float>"):
            assert placeholder not in run.stdout, (command, placeholder)
    serve_help = bestofk("serve", "--help", env={"COLUMNS": "200"}).stdout
    for flag in ("--served-model-name", "--api-key", "--max-model-len", "--gpu-memory-utilization",
                 "--tensor-parallel-size", "--log-level", "--version", "--engine-arg"):  # fmt: skip
        assert flag in serve_help, flag
    version = bestofk("serve", "--version")
    assert version.returncode == 0 and version.stdout.startswith("bestofk 0.")
    bench_help = bestofk("bench", "--help", env={"COLUMNS": "200"}).stdout
    assert "OPTILLM_VENV" in bench_help and "--port" in bench_help


def test_a_missing_extra_is_one_line_naming_it_before_any_work(tmp_path: Path) -> None:
    """Plotting is the ``plot`` extra, training the ``train`` extra: without them, ``--plot``
    and ``train`` fail at once in one line that says what to install (no server is asked,
    no sampling is lost to a failed plot at the end)."""
    dead = f"http://127.0.0.1:{free_port()}"
    cases = [
        ("matplotlib", ["eval", str(ROOT / "demo" / "tasks.jsonl"), "--url", dead, "--plot",
                        str(tmp_path / "eval.png")], "bestofk[plot]"),
        ("matplotlib", ["bench", "--cpu-only", "--plot", str(tmp_path / "b.png")],
         "bestofk[plot]"),
        ("trl", ["train", str(tmp_path / "records"), "--method", "rsft", "--base", "m", "--out",
                 str(tmp_path / "out")], "bestofk[train]"),
    ]  # fmt: skip
    for module, argv, extra in cases:
        code = (
            f"import sys; sys.modules[{module!r}] = None; sys.argv = ['bestofk', *{argv!r}]\n"
            "from bestofk.service.cli import main; main()"
        )
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=120, cwd=ROOT)  # fmt: skip
        one_line_error(run, module, extra)
        assert not (tmp_path / "out").exists()


def test_generate_shows_model_text_as_text(capsys: pytest.CaptureFixture[str]) -> None:
    """Candidates are the model's text: brackets in it are not rich markup (``[/INST]`` ended
    the table with a MarkupError, ``[train]`` vanished)."""
    from bestofk.service.cli.generate import _print

    texts = ["[/INST] 120", "pip install 'bestofk[train]'"]
    verdict = {"verifier": "regex", "score": 0.0, "error": None, "detail": "no match [/x]"}
    response = {
        "index": 1, "text": texts[1], "score": 1.0, "passed": True, "stats": {"k": 2},
        "timing": {"total_ms": 1.0, "generate_ms": 1.0, "verify_ms": 0.0},
        "candidates": [
            {"index": i, "text": text, "score": float(i), "passed": bool(i), "tokens": 3,
             "verdicts": [verdict], "mean_logprob": None}
            for i, text in enumerate(texts)
        ],
    }  # fmt: skip
    _print(response)
    out = capsys.readouterr().out
    assert "[/INST]" in out and "[/x]" in out  # (the table may wrap the cells)
    assert out.rstrip().endswith("pip install 'bestofk[train]'")


def test_engine_flags_merge_over_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bestofk.service.settings import Settings

    config = tmp_path / "config.yaml"
    config.write_text("vllm: {enforce_eager: false, engine_args: {max_num_seqs: 8}}\n")
    monkeypatch.setenv("BESTOFK_CONFIG", str(config))
    vllm = serve.vllm_overrides(
        ["enable-prefix-caching=true", "--swap-space=2", "kv_cache_dtype=fp8"],
        max_model_len=256, gpu_memory_utilization=0.5, tensor_parallel_size=2,
    )  # fmt: skip
    settings = Settings(vllm=vllm)
    assert settings.vllm.enforce_eager is False and settings.vllm.max_model_len == 256
    assert settings.vllm.gpu_memory_utilization == 0.5
    assert settings.vllm.engine_args == {
        "max_num_seqs": 8, "enable_prefix_caching": True, "swap_space": 2,
        "kv_cache_dtype": "fp8", "tensor_parallel_size": 2,
    }  # fmt: skip


def test_workers_rebuild_the_same_settings_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``--workers N`` hands its settings to spawned workers as ``BESTOFK_*`` variables: all of
    them, nested ones and lists included, not a hand-kept list of flags."""
    from bestofk.service.settings import Settings

    settings = Settings(
        backends=["http://a:1", "http://b:2"], api_keys=["sk-one", "sk-two"],
        vllm={"max_model_len": 256, "engine_args": {"max_num_seqs": 8, "x": {"y": [1, 2]}}},
        profiles={"p": {"verifiers": [{"type": "regex", "pattern": r"^\d+$"}], "k": 3}},
        limits={"max_k": 16}, selection={"tie_break": "index"}, record_redact=["a,b"],
        served_model_name="m", allow_any_verifier_target=True, workers=2,
    )  # fmt: skip
    env = settings.as_env()
    assert env["BESTOFK_API_KEYS"] == "sk-one,sk-two"
    for name in [n for n in os.environ if n.startswith("BESTOFK_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert Settings().model_dump() == settings.model_dump()


def test_vllm_serving_bench_takes_the_extra_body_it_advertises() -> None:
    script = str(ROOT / "tooling" / "bench" / "vllm_serving.py")
    help_text = subprocess.run([sys.executable, script, "--help"], capture_output=True,
                               text=True, timeout=60).stdout  # fmt: skip
    assert "--extra-body" in help_text
    bad = subprocess.run(
        [sys.executable, script, "--base-url", "http://127.0.0.1:9", "--tokenizer", "demo/model",
         "--extra-body", "[4]"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert bad.returncode == 2 and "must be a JSON object" in bad.stderr


# ---------------------------------------------------------------------------------------------
# 10. start-up errors before the engine loads


def test_serve_refuses_a_busy_port_a_missing_config_and_a_missing_model_at_once(
    tmp_path: Path,
) -> None:
    """Each in one line, before any engine loads: the timeout is far below an engine's
    start-up on this machine (the busy port took 154 s to exit)."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        one_line_error(bestofk("serve", "--port", port, timeout=30), f"127.0.0.1:{port}", "--port")
    missing = tmp_path / "missing.yaml"
    error = one_line_error(bestofk("serve", "--config", str(missing), timeout=30), str(missing))
    assert "BESTOFK_CONFIG" not in error
    bad = tmp_path / "bad.yaml"
    bad.write_text("limits: {max_k: [1\n")
    one_line_error(bestofk("serve", "--config", str(bad), timeout=30), "not valid YAML", "line")
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("limits: {max_k: 0}\n")
    one_line_error(bestofk("serve", "--config", str(wrong), timeout=30), "limits.max_k")
    one_line_error(bestofk("serve", "--model", str(tmp_path / "no-model"), timeout=30),
                   "does not exist")  # fmt: skip


def test_serve_without_vllm_says_what_to_do_in_one_line(tmp_path: Path) -> None:
    """As in the ``remote`` image, which has no vLLM: the in-process engine (no --backend) and
    vLLM's reasoning parsers are refused before anything starts, each in one line."""
    hide = tmp_path / "no-vllm"
    hide.mkdir()
    # Imported at start-up from PYTHONPATH: vLLM then looks uninstalled to find_spec and import.
    (hide / "sitecustomize.py").write_text("import sys\nsys.modules['vllm'] = None\n")
    path = os.pathsep.join(p for p in (str(hide), os.environ.get("PYTHONPATH")) if p)
    env = {"PYTHONPATH": path}
    one_line_error(bestofk("serve", "--port", "0", env=env, timeout=30),
                   "vLLM is not installed", "--backend URL")  # fmt: skip
    one_line_error(
        bestofk("serve", "--backend", "http://127.0.0.1:9", "--reasoning-parser", "qwen3",
                "--port", "0", env=env, timeout=30),
        "--reasoning-parser qwen3", "vLLM is not installed", "vllm serve",
    )  # fmt: skip
