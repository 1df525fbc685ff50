"""Faults, overload and hostile input: every request gets an answer or a clear error, and the
service recovers afterwards.

Each fault is reproduced against a real bestofk process: remote backends are real HTTP
servers on loopback (the real vLLM OpenAI server, and :mod:`bestofk.tooling.fake_backend`, which
misbehaves on demand), sandboxes are real bwrap sandboxes, signals are real signals.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bestofk.tooling.procs import (
    Server,
    engine_env,
    free_port,
    start_bestofk,
    start_fake_backend,
)
from bestofk.verifiers.sandbox.process import uid_processes

HEALTH_INTERVAL = "0.5"
"""Backend health checks in these servers: a recovered backend is seen within a second."""
FAULTY_LIMITS = {
    "BESTOFK_LIMITS__MAX_K": "4",
    "BESTOFK_LIMITS__MAX_CANDIDATES": "4",
    "BESTOFK_LIMITS__MAX_PROMPT_CHARS": "2000",
    "BESTOFK_LIMITS__MAX_CANDIDATE_CHARS": "1000",
    "BESTOFK_LIMITS__MAX_MESSAGES": "8",
    "BESTOFK_LIMITS__MAX_VERIFIERS": "4",
    "BESTOFK_LIMITS__MAX_TOKENS": "64",
    "BESTOFK_LIMITS__MAX_BODY_BYTES": "200000",
    "BESTOFK_LIMITS__REQUEST_TIMEOUT_S": "3",
    "BESTOFK_LIMITS__MAX_INFLIGHT": "1",
    "BESTOFK_LIMITS__MAX_QUEUED": "0",
}
SPIN = "def solve(x):\n    while True:\n        pass\n"
SQUARE = "def solve(x):\n    return x * x\n"


# --- helpers -------------------------------------------------------------------------------


def set_mode(fake: Server, mode: str) -> dict[str, Any]:
    """Switch the fake's behaviour; returns what it has seen so far."""
    reply = httpx.post(fake.url + "/control", json={"mode": mode}, timeout=5)
    reply.raise_for_status()
    report: dict[str, Any] = reply.json()
    return report


def report(fake: Server) -> dict[str, Any]:
    """What the fake has seen: completion requests and aborted streams."""
    seen: dict[str, Any] = httpx.get(fake.url + "/control", timeout=5).json()
    return seen


def start_faulty(log: Path, *backends: str, **env: str) -> Server:
    """bestofk over ``backends`` with fast health checks and ``env`` on top, ready."""
    args = [arg for url in backends for arg in ("--backend", url)]
    full = engine_env(BESTOFK_BACKEND_HEALTH_INTERVAL_S=HEALTH_INTERVAL, **env)
    server = start_bestofk(log, *args, env=full)
    server.wait_ready(60, path="/v1/models")
    return server


def post(server: Server, path: str, body: object, timeout: float = 60) -> httpx.Response:
    """POST JSON."""
    return httpx.post(server.url + path, json=body, timeout=timeout)


def error_of(reply: httpx.Response) -> dict[str, Any]:
    """The error envelope's inner object, checked for its shape."""
    error: dict[str, Any] = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    return error


def wait_for(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll ``check`` until true; fail naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout_s}s: {what}")


def healthy(server: Server) -> bool:
    """Whether ``/health`` answers 200."""
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(server.url + "/health", timeout=2).status_code == 200
    return False


def generate(k: int = 2, **extra: Any) -> dict[str, Any]:
    """A small /generate body whose candidates pass when they contain a digit."""
    return {
        "prompt": "What is 6 x 7?",
        "k": k,
        "sampling": {"max_tokens": 8},
        "verifiers": [{"type": "regex", "pattern": r"\d"}],
        **extra,
    }


def slot_uids(server: Server) -> list[int]:
    """The sandbox uids this server claimed: it holds a lock file named after each."""
    uids = []
    fds = Path(f"/proc/{server.process.pid}/fd")
    for fd in fds.iterdir():
        with contextlib.suppress(OSError):
            target = Path(os.readlink(fd))
            if target.parent.name == "bestofk-sandbox-uids" and target.suffix == ".lock":
                uids.append(int(target.stem))
    assert uids, "the server claimed no sandbox uids (is it running as root with bwrap?)"
    return sorted(uids)


def cpu_ticks(uids: list[int]) -> int:
    """CPU time (clock ticks) used so far by every live process running as one of ``uids``."""
    total = 0
    for uid in uids:
        for pid in uid_processes(uid):
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])  # utime, stime
    return total


def sandbox_runs(server: Server, outcome: str) -> float:
    """``bestofk_sandbox_runs_total{outcome=...}`` from the server's metrics."""
    text = httpx.get(server.url + "/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith("bestofk_sandbox_runs_total{") and f'outcome="{outcome}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def unit_tests_request(code: str, timeout_s: float, **extra: Any) -> dict[str, Any]:
    """A /verify body: one candidate, ``solve(2) == 4``."""
    spec = {"type": "unit_tests", "entry_point": "solve", "timeout_s": timeout_s,
            "cases": [{"args": [2], "expected": 4}]}  # fmt: skip
    return {"candidates": [f"```python\n{code}```"], "verifiers": [spec], **extra}


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture
def fake(fake_backend: Server) -> Iterator[Server]:
    """The module's fake backend, back to ``ok`` after each test."""
    yield fake_backend
    set_mode(fake_backend, "ok")


@pytest.fixture(scope="module")
def faulty(fake_backend: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """bestofk over the fake backend: small limits, a 3 s deadline, one request at a time."""
    server = start_faulty(
        tmp_path_factory.mktemp("logs") / "faulty.log", fake_backend.url, **FAULTY_LIMITS
    )
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def small_sandbox(
    fake_backend: Server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """bestofk with one sandbox slot, one queue place and a short queue wait."""
    server = start_faulty(
        tmp_path_factory.mktemp("logs") / "small-sandbox.log",
        fake_backend.url,
        BESTOFK_SANDBOX_SLOTS="1",
        BESTOFK_SANDBOX_MAX_QUEUE="1",
        BESTOFK_SANDBOX_QUEUE_TIMEOUT_S="0.5",
    )
    try:
        yield server
    finally:
        server.stop()


# --- remote backend faults -------------------------------------------------------------------


def test_backend_down_at_start_then_up(tmp_path: Path) -> None:
    port = free_port()
    server = start_faulty(tmp_path / "bestofk.log", f"http://127.0.0.1:{port}")
    fake = None
    try:
        reply = httpx.get(server.url + "/health", timeout=5)
        assert reply.status_code == 503 and reply.json()["status"] == "no_healthy_backend"
        assert "failed its health check" in reply.json()["detail"]
        refused = post(server, "/generate", generate())
        assert refused.status_code == 503, refused.text
        assert error_of(refused)["type"] == "overloaded_error"
        assert int(refused.headers["retry-after"]) >= 1
        fake = start_fake_backend(tmp_path / "fake.log", port=port)
        wait_for(lambda: healthy(server), 5, "/health turns 200 once the backend is up")
        reply = post(server, "/generate", generate())
        assert reply.status_code == 200, reply.text
        assert reply.json()["text"] == "42" and reply.json()["passed"] is True
    finally:
        server.stop()
        if fake is not None:
            fake.stop()


def test_backend_killed_mid_request_is_retried_then_avoided(
    vllm_backend: Server, tmp_path: Path
) -> None:
    # Listed first, the fake gets the first request (least in flight, ties to the first).
    dying = start_fake_backend(tmp_path / "dying.log", mode="die")
    server = start_faulty(tmp_path / "bestofk.log", dying.url, vllm_backend.url)
    try:
        wait_for(lambda: healthy(server), 10, "both backends checked")
        # Nothing had reached the client: the real vLLM server takes the request whole.
        reply = post(server, "/generate", generate())
        assert reply.status_code == 200, reply.text
        assert reply.json()["stats"]["generated"] == 2
        assert dying.process.wait(timeout=10) == 1, "the fake backend should have died"
        assert "broke mid-stream" in server.log.read_text()
        for _ in range(3):
            reply = post(server, "/generate", generate())
            assert reply.status_code == 200, reply.text
            assert reply.json()["stats"]["generated"] == 2
        assert healthy(server)
    finally:
        server.stop()
        dying.stop()


def test_slow_backend_gets_the_deadline_then_partial(faulty: Server, fake: Server) -> None:
    set_mode(fake, "slow")
    aborted = report(fake)["aborted"]
    for asked, expected in ((1.0, 1.0), (60.0, 3.0)):  # a request may lower the limit only
        start = time.monotonic()
        reply = post(faulty, "/generate", generate(timeout_s=asked))
        elapsed = time.monotonic() - start
        assert reply.status_code == 504, reply.text
        assert error_of(reply)["type"] == "timeout_error"
        assert f"{expected:g}s deadline" in error_of(reply)["message"]
        assert expected - 0.1 <= elapsed < expected + 2.0, elapsed
    # Closing the stream is how the backend learns to stop generating.
    wait_for(lambda: report(fake)["aborted"] >= aborted + 2, 5, "the backend saw the aborts")
    set_mode(fake, "slow_tail")  # candidate 0 finishes; the other two never do
    reply = post(faulty, "/generate", generate(k=3, timeout_s=1.0))
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["stats"]["partial"] is True and body["stats"]["generated"] == 1
    assert body["text"] == "42" and body["passed"] is True
    set_mode(fake, "ok")
    reply = post(faulty, "/generate", generate(k=3))
    assert reply.status_code == 200 and reply.json()["stats"]["partial"] is False, reply.text


GARBAGE = {
    "garbage": "malformed stream chunk",
    "garbage_shape": "malformed stream chunk",
    "empty": "ended the stream with 0 of 2 candidates done",
    "error_status": "backend answered 500: the fake backend fell over",
}


@pytest.mark.parametrize("mode", sorted(GARBAGE))
def test_garbage_from_the_backend_is_a_bad_gateway(faulty: Server, fake: Server, mode: str) -> None:
    set_mode(fake, mode)
    reply = post(faulty, "/generate", generate())
    assert reply.status_code == 502, reply.text
    error = error_of(reply)
    assert error["type"] == "backend_error" and GARBAGE[mode] in error["message"], error
    # A backend that spoke garbage is taken out until a health check passes again.
    wait_for(lambda: healthy(faulty), 5, "the backend is back after a health check")
    chat = {"model": "demo", "messages": [{"role": "user", "content": "6 x 7?"}], "best_of": 2}
    reply = post(faulty, "/v1/chat/completions", chat)
    assert reply.status_code == 502 and error_of(reply)["type"] == "backend_error", reply.text
    set_mode(fake, "ok")
    wait_for(lambda: healthy(faulty), 5, "the backend is healthy again")
    reply = post(faulty, "/generate", generate())
    assert reply.status_code == 200 and reply.json()["text"] == "42", reply.text


def test_overload_is_refused_with_retry_after(faulty: Server, fake: Server) -> None:
    set_mode(fake, "slow")  # the one in-flight place stays taken for the 3 s deadline
    result: dict[str, httpx.Response] = {}
    holder = threading.Thread(
        target=lambda: result.setdefault("held", post(faulty, "/generate", generate()))
    )
    seen = len(report(fake)["requests"])
    holder.start()
    try:
        wait_for(lambda: len(report(fake)["requests"]) > seen, 5, "the first request is held")
        native = post(faulty, "/generate", generate())
        assert native.status_code == 503 and int(native.headers["retry-after"]) >= 1
        assert error_of(native)["type"] == "overloaded_error"
        body = {"model": "demo", "prompt": "6 x 7?", "max_tokens": 4}
        openai = post(faulty, "/v1/completions", body)
        assert openai.status_code == 429 and int(openai.headers["retry-after"]) >= 1
        assert error_of(openai)["type"] == "rate_limit_error"
    finally:
        holder.join()
    assert result["held"].status_code == 504
    set_mode(fake, "ok")
    assert post(faulty, "/generate", generate()).status_code == 200


# --- verifier faults -----------------------------------------------------------------------


def test_failing_judge_endpoint_gives_error_verdicts(faulty: Server, fake: Server) -> None:
    def judged(endpoint: str) -> list[dict[str, Any]]:
        body = {
            "prompt": "What is 6 x 7?",
            "candidates": ["42", "41"],
            "verifiers": [{"type": "judge", "endpoint": endpoint, "timeout_s": 5}],
        }
        reply = post(faulty, "/verify", body)
        assert reply.status_code == 200, reply.text  # the request is answered all the same
        return [c["verdicts"][0] for c in reply.json()["candidates"]]

    dead = judged(f"http://127.0.0.1:{free_port()}")
    assert all(v["error"] and "unreachable" in v["error"] and v["score"] == 0 for v in dead), dead
    set_mode(fake, "garbage")
    garbled = judged(fake.url)
    assert all(v["error"] and v["score"] == 0 for v in garbled), garbled
    set_mode(fake, "ok")
    fine = judged(fake.url)
    assert all(v["error"] is None and v["score"] > 0.5 for v in fine), fine


def test_sandbox_pool_exhausted_waits_then_503(small_sandbox: Server) -> None:
    spinning = unit_tests_request(SPIN, timeout_s=2.0)
    replies: list[httpx.Response] = []
    waited: list[float] = []

    def send() -> None:
        start = time.monotonic()
        replies.append(reply := post(small_sandbox, "/verify", spinning))
        if reply.status_code == 503:
            waited.append(time.monotonic() - start)

    threads = [threading.Thread(target=send) for _ in range(4)]
    for thread in threads:
        thread.start()
        time.sleep(0.05)
    for thread in threads:
        thread.join()
    codes = sorted(r.status_code for r in replies)
    assert codes.count(200) >= 1 and codes.count(503) >= 2, codes
    # One run took the slot, one waited in the queue for 0.5 s, the rest found it full.
    assert max(waited) >= 0.5, waited
    reasons = " | ".join(error_of(r)["message"] for r in replies if r.status_code == 503)
    assert "no slot came free in 0.5s" in reasons and "already queued" in reasons, reasons
    for reply in replies:
        if reply.status_code == 503:
            assert int(reply.headers["retry-after"]) >= 1
            error = error_of(reply)
            assert error["type"] == "overloaded_error" and "sandbox" in error["message"], error
        else:
            verdict = reply.json()["candidates"][0]["verdicts"][0]
            assert not verdict["passed"] and "timed out" in verdict["detail"], verdict
    reply = post(small_sandbox, "/verify", unit_tests_request(SQUARE, timeout_s=2.0))
    assert reply.status_code == 200 and reply.json()["passed"] is True, reply.text


def test_client_disconnect_kills_the_sandbox_run(small_sandbox: Server) -> None:
    uids = slot_uids(small_sandbox)
    killed = sandbox_runs(small_sandbox, "killed")
    spinning = unit_tests_request(SPIN, timeout_s=20.0)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            small_sandbox.url + "/verify", json=spinning, timeout=httpx.Timeout(10, read=1.5)
        )
    wait_for(
        lambda: sandbox_runs(small_sandbox, "killed") == killed + 1, 5, "the run counted killed"
    )
    before = cpu_ticks(uids)
    time.sleep(1.0)
    assert cpu_ticks(uids) - before < 10, "something still runs under the sandbox uids"
    # The one slot is free again at once (a queued run would wait 0.5 s, then get 503).
    reply = post(small_sandbox, "/verify", unit_tests_request(SQUARE, timeout_s=2.0))
    assert reply.status_code == 200 and reply.json()["passed"] is True, reply.text


# --- shutdown --------------------------------------------------------------------------------


def sleeping_verify_then_sigterm(
    server: Server, sleep_s: float
) -> tuple[threading.Thread, dict[str, httpx.Response]]:
    """A /verify whose sandboxed test sleeps ``sleep_s``, SIGTERM once it runs; the thread
    and where its reply lands."""
    slow = f"import time\ndef solve(x):\n    time.sleep({sleep_s})\n    return x * x\n"
    result: dict[str, httpx.Response] = {}
    request = threading.Thread(
        target=lambda: result.setdefault(
            "reply", post(server, "/verify", unit_tests_request(slow, timeout_s=sleep_s + 8))
        )
    )
    request.start()
    time.sleep(0.8)  # the run is in its sandbox now
    os.kill(server.process.pid, signal.SIGTERM)
    return request, result


def test_sigterm_drains_in_flight_work_and_leaves_nothing(
    fake_backend: Server, tmp_path: Path
) -> None:
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    grace = 20
    server = start_faulty(
        tmp_path / "bestofk.log",
        fake_backend.url,
        BESTOFK_SHUTDOWN_GRACE_S=str(grace),
        TMPDIR=str(tmpdir),
    )
    try:
        uids = slot_uids(server)
        stopped = time.monotonic()
        request, result = sleeping_verify_then_sigterm(server, 2)

        def draining() -> bool:
            with contextlib.suppress(httpx.HTTPError):
                health = httpx.get(server.url + "/health", timeout=1)
                return health.status_code == 503 and health.json()["status"] == "draining"
            return False

        wait_for(draining, 2, "/health says draining after SIGTERM")
        # The socket still answers during the drain: new work is refused with a status.
        late = post(server, "/verify", {"candidates": ["42"]})
        assert late.status_code == 503, late.text
        assert late.json()["error"]["type"] == "overloaded_error"
        assert int(late.headers["retry-after"]) >= 1
        request.join(timeout=grace)
        reply = result["reply"]
        assert reply.status_code == 200 and reply.json()["passed"] is True, reply.text
        assert server.process.wait(timeout=grace) == 0, server.log_tail()
        assert time.monotonic() - stopped < grace
        # Dead sandboxes are reaped by PID 1 a moment later.
        wait_for(lambda: not any(uid_processes(u) for u in uids), 5, "no sandbox processes left")
        assert list(tmpdir.iterdir()) == []
        log = server.log.read_text()
        assert "Traceback" not in log and "draining: 1 request(s) in flight" in log, log
    finally:
        server.stop()


def test_sigterm_past_the_grace_period_cuts_with_503(fake_backend: Server, tmp_path: Path) -> None:
    grace = 2
    server = start_faulty(
        tmp_path / "bestofk.log", fake_backend.url, BESTOFK_SHUTDOWN_GRACE_S=str(grace)
    )
    try:
        request, result = sleeping_verify_then_sigterm(server, 20)
        request.join(timeout=grace + 10)
        reply = result["reply"]
        assert reply.status_code == 503, reply.text
        assert reply.json()["error"]["type"] == "overloaded_error"
        assert int(reply.headers["retry-after"]) >= 1
        assert server.process.wait(timeout=15) == 0, server.log_tail()
        assert "cutting 1 request(s) with 503" in server.log.read_text()
    finally:
        server.stop()


# --- input limits --------------------------------------------------------------------------


def _ut(**spec: Any) -> dict[str, Any]:
    return {"candidates": ["x"], "verifiers": [{"type": "unit_tests", "timeout_s": 1, **spec}]}


def _nested_schema(depth: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "array", "items": schema}
    return schema


MSG = {"role": "user", "content": "x"}
CASE = {"args": [1], "expected": 1}
LIMITS = [
    ("body size", "/verify", {"candidates": ["x" * 250_000]}, 413, "request body exceeds"),
    ("prompt", "/generate", {"prompt": "x" * 2001}, 413, "the prompt has 2001 characters"),
    ("message count", "/generate", {"messages": [MSG] * 9}, 413, "9 messages exceed"),
    ("message size", "/generate", {"messages": [{"role": "user", "content": "x" * 2001}]},
     413, "the prompt has 2001 characters"),
    ("k", "/generate", {"prompt": "x", "k": 5}, 400, "k=5 exceeds the limit of 4"),
    ("max_tokens", "/generate", {"prompt": "x", "sampling": {"max_tokens": 65}}, 400,
     "max_tokens=65 exceeds"),
    ("stop strings", "/generate", {"prompt": "x", "sampling": {"stop": ["a"] * 17}}, 400,
     "stop"),
    ("candidate count", "/verify", {"candidates": ["x"] * 5}, 400, "5 candidates exceed"),
    ("candidate size", "/verify", {"candidates": ["x" * 1001]}, 413,
     "candidate 0 has 1001 characters"),
    ("verifier count", "/verify",
     {"candidates": ["x"], "verifiers": [{"type": "regex", "pattern": "x"}] * 5}, 400,
     "5 verifiers exceed"),
    ("unit_tests cases", "/verify", _ut(entry_point="f", cases=[CASE] * 201), 400,
     "at most 200 items"),
    ("unit_tests io", "/verify", _ut(io=[{"stdin": "", "stdout": ""}] * 201), 400,
     "at most 200 items"),
    ("unit_tests code", "/verify",
     _ut(tests="def test_a():\n    pass\n" + "#" * 64_000), 400, "at most 64000 characters"),
    ("unit_tests nesting", "/verify",
     _ut(tests="def test_a():\n    x = " + "-" * 50_000 + "1\n"), 400, "nested too deeply"),
    ("unit_tests timeout", "/verify", _ut(tests="def test_a():\n    pass\n", timeout_s=31),
     400, "timeout_s"),
    ("regex pattern", "/verify",
     {"candidates": ["x"], "verifiers": [{"type": "regex", "pattern": "a" * 2001}]}, 400,
     "longer than 2000 characters"),
    ("style patterns", "/verify",
     {"candidates": ["x"], "verifiers": [{"type": "style", "forbid": ["a"] * 33}]}, 400,
     "forbid"),
    ("selection pattern", "/verify",
     {"candidates": ["x"], "selection": {"policy": "vote", "extract": "a" * 2001}}, 400,
     "extract"),
    ("schema nesting", "/verify",
     {"candidates": ["x"], "verifiers": [{"type": "json_schema", "schema": _nested_schema(900)}]},
     400, "nested too deeply"),
    ("openai prompt", "/v1/completions", {"model": "demo", "prompt": "x" * 2001}, 413,
     "the prompt has 2001 characters"),
    ("openai messages", "/v1/chat/completions", {"model": "demo", "messages": [MSG] * 9}, 413,
     "9 messages exceed"),
    ("openai best_of", "/v1/completions", {"model": "demo", "prompt": "x", "best_of": 5}, 400,
     "k=5 exceeds"),
    ("openai schema", "/v1/chat/completions",
     {"model": "demo", "messages": [MSG], "response_format": {
         "type": "json_schema", "json_schema": {"schema": {"type": 5}}}}, 400,
     "invalid JSON Schema"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "path", "body", "status", "needle"), LIMITS,
                         ids=[case[0] for case in LIMITS])  # fmt: skip
def test_input_limits_answer_a_clear_4xx(
    faulty: Server, name: str, path: str, body: dict[str, Any], status: int, needle: str
) -> None:
    reply = post(faulty, path, body)
    assert reply.status_code == status, reply.text[:500]
    error = error_of(reply)
    assert error["type"] == "invalid_request_error" and needle in error["message"], error
    assert healthy(faulty)


def test_framework_errors_use_the_error_envelope(faulty: Server) -> None:
    assert error_of(httpx.get(faulty.url + "/nope", timeout=5))["type"] == "not_found_error"
    wrong_method = httpx.delete(faulty.url + "/generate", timeout=5)
    assert wrong_method.status_code == 405
    assert error_of(wrong_method)["code"] == "method_not_allowed"
    deep = "[" * 100_000 + "]" * 100_000
    reply = httpx.post(
        faulty.url + "/generate", content=deep, headers={"content-type": "application/json"}
    )
    assert reply.status_code == 400 and error_of(reply)["type"] == "invalid_request_error"


# --- last: it changes how the faulty server talks to its backend ------------------------------


def test_backend_refusing_n_gets_k_calls_of_one(faulty: Server, fake: Server) -> None:
    set_mode(fake, "refuse_n")
    seen = len(report(fake)["requests"])
    reply = post(faulty, "/generate", generate(k=3))
    assert reply.status_code == 200, reply.text
    assert reply.json()["stats"]["generated"] == 3
    calls = [r["n"] for r in report(fake)["requests"][seen:]]
    assert calls == [3, 1, 1, 1], calls  # refused once, then remembered: n=1 from now on
    reply = post(faulty, "/generate", generate(k=2))
    assert reply.status_code == 200
    assert [r["n"] for r in report(fake)["requests"][seen + 4 :]] == [1, 1]
