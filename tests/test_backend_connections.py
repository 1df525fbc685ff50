"""The remote engine keeps its connections to a backend open between requests.

A response dropped before its body ends takes its TCP connection with it, so each request would
open a new one: a connect and a teardown on both sides, about a millisecond of CPU a request each.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bestofk.tooling.procs import Server, engine_env, start_bestofk


@pytest.fixture(scope="module")
def proxied(
    fake_backend: Server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Server, Server]]:
    log = tmp_path_factory.mktemp("logs") / "bestofk.log"
    server = start_bestofk(log, "--backend", fake_backend.url, env=engine_env())
    try:
        server.wait_ready(60)
        yield server, fake_backend
    finally:
        server.stop()


def _ports(backend: Server) -> list[int]:
    seen = httpx.get(backend.url + "/control", timeout=5).json()["requests"]
    return [r["client_port"] for r in seen]


@pytest.mark.parametrize("path", ["/generate", "/v1/completions"])
def test_sequential_requests_reuse_one_backend_connection(
    proxied: tuple[Server, Server], path: str, tmp_path: Path
) -> None:
    server, backend = proxied
    body: dict[str, object] = {"prompt": "What is 6 times 7?"}
    if path == "/generate":
        body |= {"k": 4, "sampling": {"max_tokens": 4}}
    else:
        body |= {"best_of": 4, "max_tokens": 4, "model": "demo"}
    before = len(_ports(backend))
    with httpx.Client(timeout=30) as client:
        for _ in range(10):
            reply = client.post(server.url + path, json=body)
            assert reply.status_code == 200, reply.text
    ports = _ports(backend)[before:]
    assert len(ports) == 10
    assert len(set(ports)) == 1, f"10 requests opened {len(set(ports))} backend connections"
