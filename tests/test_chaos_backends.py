"""Chaos on the remote engine's backends: each test reproduces one failure found by probing a
running service (issue 14: wedged backend, runaway output, killed backend, misleading health)
against real bestofk processes over real :mod:`bestofk.tooling.fake_backend` servers on loopback.
The in-process engine's statuses (``engine_dead``, ``restarting``) are tested on a real engine in
``test_chaos_engine.py``."""

from __future__ import annotations

from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from bestofk.tooling.procs import Server, engine_env, free_port, start_bestofk, start_fake_backend
from tests.test_faults import (
    error_of,
    generate,
    healthy,
    post,
    report,
    set_mode,
    start_faulty,
    wait_for,
)

OUTLIERS = {
    "BESTOFK_BACKEND_FIRST_TOKEN_TIMEOUT_S": "1",
    "BESTOFK_BACKEND_MAX_FAILURES": "3",
    "BESTOFK_BACKEND_EJECTION_S": "5",
}
"""A backend without a first token for 1 s is given up on; three in a row eject it for 5 s."""


def rss_bytes(server: Server) -> int:
    """The server process's resident memory."""
    for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def backend_up(server: Server) -> dict[str, float]:
    """``bestofk_backend_up`` by backend, from the server's /metrics."""
    text = httpx.get(server.url + "/metrics", timeout=10).text
    return {
        sample.labels["backend"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "bestofk_backend_up"
    }


def test_wedged_backend_is_ejected_and_its_requests_retried_elsewhere(tmp_path: Path) -> None:
    """Item 4: a backend that answers /v1/models but never sends a token gets the first few
    requests only (each retried on the healthy one), then none until its cool-down ends."""
    wedged = start_fake_backend(tmp_path / "wedged.log", mode="wedge")
    fine = start_fake_backend(tmp_path / "fine.log")
    server = start_faulty(tmp_path / "bestofk.log", wedged.url, fine.url, **OUTLIERS)
    try:
        wait_for(lambda: healthy(server), 10, "both backends checked")
        # Sequential requests: least-in-flight ties go to the first listed, the wedged one.
        replies = [post(server, "/generate", generate(timeout_s=10)) for _ in range(8)]
        assert [r.status_code for r in replies] == [200] * 8, replies[-1].text
        assert all(r.json()["text"] == "42" for r in replies)
        hits = len(report(wedged)["requests"])
        assert hits == 3, f"the wedged backend got {hits} requests, not the first 3 only"
        wait_for(lambda: report(wedged)["aborted"] == hits, 5, "each wedged call was closed")
        assert backend_up(server)[wedged.url] == 0
        assert "ejected" in server.log.read_text()
        # The cool-down ends: the next request probes it; healthy again, it is back in rotation.
        set_mode(wedged, "ok")

        def probed() -> bool:
            assert post(server, "/generate", generate()).status_code == 200
            return len(report(wedged)["requests"]) > hits

        wait_for(probed, 15, "the backend gets a request again after its cool-down")
        wait_for(lambda: backend_up(server)[wedged.url] == 1, 5, "bestofk_backend_up is 1 again")
    finally:
        server.stop()
        wedged.stop()
        fine.stop()


def test_never_ending_candidate_is_cut_at_its_cap(tmp_path: Path) -> None:
    """Item 7: a backend streaming one candidate forever (max_tokens ignored) cannot grow the
    server's memory: the candidate ends at its cap with finish_reason "length" and the stream
    is closed, while the other candidate is chosen as usual."""
    flood = start_fake_backend(tmp_path / "flood.log", mode="flood")
    server = start_faulty(tmp_path / "bestofk.log", flood.url)
    try:
        wait_for(lambda: healthy(server), 10, "the backend checked")
        before = rss_bytes(server)
        reply = post(server, "/generate", generate(k=2, timeout_s=10))
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert body["stats"]["partial"] is False, "the request ran to its deadline"
        runaway, other = sorted(body["candidates"], key=lambda c: c["index"])
        assert runaway["finish_reason"] == "length"
        assert len(runaway["text"].encode()) <= 8 * 64  # max_tokens x max_bytes_per_token
        assert other["text"] == "42" and body["text"] == "42"
        wait_for(lambda: report(flood)["aborted"] == 1, 5, "the flood's stream was closed")
        assert rss_bytes(server) - before < 50 * 1024 * 1024
        assert "max_tokens" in server.log.read_text(), "the misbehaving backend is logged"
    finally:
        server.stop()
        flood.stop()


def test_backend_killed_mid_request_is_retried_on_a_healthy_one(tmp_path: Path) -> None:
    """Item 8: a backend dying before any candidate reached the client costs the client
    nothing (one retry on the healthy backend); its going down and coming back are logged and
    shown by ``bestofk_backend_up``."""
    dying = start_fake_backend(tmp_path / "dying.log", mode="die")
    fine = start_fake_backend(tmp_path / "fine.log")
    server = start_faulty(tmp_path / "bestofk.log", dying.url, fine.url)
    revived = None
    try:
        wait_for(lambda: healthy(server), 10, "both backends checked")
        reply = post(server, "/generate", generate())
        assert reply.status_code == 200, reply.text
        assert reply.json()["text"] == "42" and reply.json()["stats"]["generated"] == 2
        assert dying.process.wait(timeout=10) == 1, "the fake backend should have died"
        assert len(report(fine)["requests"]) == 1
        assert backend_up(server) == {dying.url: 0, fine.url: 1}
        assert f"backend {dying.url} is down" in server.log.read_text()
        port = int(dying.url.rsplit(":", 1)[1])
        revived = start_fake_backend(tmp_path / "revived.log", port=port)
        wait_for(lambda: backend_up(server)[dying.url] == 1, 5, "the backend is seen back up")
        assert f"backend {dying.url} is up" in server.log.read_text()
    finally:
        server.stop()
        fine.stop()
        dying.stop()
        if revived is not None:
            revived.stop()


def test_health_says_why_it_is_not_ready(tmp_path: Path) -> None:
    """Item 9: no reachable backend reads ``no_healthy_backend`` (not ``loading``), and the
    503s point Retry-After at the next health check, 30 s away, not 1 s."""
    nobody = f"http://127.0.0.1:{free_port()}"
    env = engine_env(BESTOFK_BACKEND_HEALTH_INTERVAL_S="30")
    server = start_bestofk(tmp_path / "bestofk.log", "--backend", nobody, env=env)
    try:
        server.wait_ready(60, path="/v1/models")
        reply = httpx.get(server.url + "/health", timeout=5)
        assert reply.status_code == 503
        assert reply.json()["status"] == "no_healthy_backend", reply.json()
        assert nobody in reply.json()["detail"]
        assert 15 <= int(reply.headers["retry-after"]) <= 30, reply.headers
        refused = post(server, "/generate", generate())
        assert refused.status_code == 503 and error_of(refused)["type"] == "overloaded_error"
        assert "no_healthy_backend" in error_of(refused)["message"]
        assert 15 <= int(refused.headers["retry-after"]) <= 30, refused.headers
    finally:
        server.stop()


def test_real_vllm_candidates_stop_at_the_byte_cap(vllm_backend: Server, tmp_path: Path) -> None:
    """Item 7 on a real ``vllm serve`` stream: with one byte a token, every candidate's text
    stops within max_tokens bytes (vLLM's own deltas, with and without logprobs)."""
    server = start_faulty(
        tmp_path / "bestofk.log", vllm_backend.url, BESTOFK_LIMITS__MAX_BYTES_PER_TOKEN="1"
    )
    try:
        for tie_break in ("logprob", "index"):  # index: token ids count, no logprobs asked
            body = generate(k=4, selection={"tie_break": tie_break})
            body["sampling"] = {"max_tokens": 16, "min_tokens": 16, "temperature": 1.0}
            reply = post(server, "/generate", body)
            assert reply.status_code == 200, reply.text
            candidates = reply.json()["candidates"]
            assert len(candidates) == 4
            for candidate in candidates:
                assert candidate["finish_reason"] == "length", candidate
                assert len(candidate["text"].encode()) <= 16, candidate
            # Without the cap these 16-token candidates are longer than 16 bytes.
            assert any(c["tokens"] < 16 for c in candidates), candidates
    finally:
        server.stop()
