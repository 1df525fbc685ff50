"""Chaos at the HTTP edge, over the misbehaving fake backend: a streaming request refused before
its first byte, and a too-large body answered with 413 to clients that send it all first."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bestofk.tooling.procs import Server
from tests.test_faults import set_mode, start_faulty

CHAT = {"model": "demo", "messages": [{"role": "user", "content": "What's 5!?"}]}


@pytest.fixture(scope="module")
def one_slot(fake_backend: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """bestofk that runs one request at a time and queues none."""
    server = start_faulty(
        tmp_path_factory.mktemp("logs") / "bestofk.log",
        fake_backend.url,
        BESTOFK_LIMITS__MAX_INFLIGHT="1",
        BESTOFK_LIMITS__MAX_QUEUED="0",
        BESTOFK_ALLOW_ANY_VERIFIER_TARGET="0",
    )
    try:
        yield server
    finally:
        server.stop()


def test_streaming_overload_is_a_429_before_the_stream(
    fake_backend: Server, one_slot: Server
) -> None:
    set_mode(fake_backend, "slow")
    try:
        # Headers come only once a request is admitted: this stream now holds the one slot.
        with httpx.stream(
            "POST", one_slot.url + "/v1/chat/completions", json={**CHAT, "stream": True}
        ) as hog:
            assert hog.status_code == 200
            reply = httpx.post(
                one_slot.url + "/v1/chat/completions", json={**CHAT, "stream": True}, timeout=10
            )
        assert reply.status_code == 429, reply.text
        assert reply.headers["content-type"].startswith("application/json")
        assert reply.json()["error"]["type"] == "rate_limit_error"
        assert int(reply.headers["retry-after"]) >= 1
    finally:
        set_mode(fake_backend, "ok")


def test_streaming_without_a_healthy_backend_is_a_503(
    fake_backend: Server, one_slot: Server
) -> None:
    set_mode(fake_backend, "down")
    try:
        for _ in range(100):  # until the health check has seen the backend go down
            reply = httpx.post(
                one_slot.url + "/v1/chat/completions", json={**CHAT, "stream": True}, timeout=10
            )
            if reply.status_code != 200:
                break
            threading.Event().wait(0.1)
        assert reply.status_code == 503, reply.text
        assert reply.json()["error"]["type"] == "overloaded_error"
        assert "retry-after" in reply.headers
    finally:
        set_mode(fake_backend, "ok")
        one_slot.wait_ready(30)


def test_streaming_with_a_disallowed_judge_is_a_400_before_the_stream(one_slot: Server) -> None:
    judge = {"type": "judge", "endpoint": "http://10.0.0.1:9/v1", "model": "m"}
    reply = httpx.post(
        one_slot.url + "/v1/chat/completions",
        json={**CHAT, "stream": True, "verifiers": [judge]},
        timeout=10,
    )
    assert reply.status_code == 400, reply.text
    assert "BESTOFK_VERIFIER_TARGETS" in reply.json()["error"]["message"]


def test_too_large_body_is_a_413_for_clients_that_send_it_all(one_slot: Server) -> None:
    body = json.dumps({"candidates": ["x" * (5 * 1024 * 1024)]}).encode()
    request = urllib.request.Request(
        one_slot.url + "/verify", data=body, headers={"content-type": "application/json"}
    )
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=30)
    assert info.value.code == 413
    assert json.loads(info.value.read())["error"]["type"] == "invalid_request_error"
    assert httpx.get(one_slot.url + "/health", timeout=5).status_code == 200


def test_chunked_too_large_body_is_a_413(one_slot: Server, tmp_path: Path) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"candidates": ["'
        for _ in range(80):
            yield b"x" * 65536
        yield b'"]}'

    reply = httpx.post(
        one_slot.url + "/verify",
        content=chunks(),
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert reply.status_code == 413, reply.text
