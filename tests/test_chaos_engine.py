"""Chaos on the in-process engine: seeded bursts that used to kill it, and a worker killed by hand.

The kill test restarts the session's shared engine, so it runs last in this file and waits until
the engine serves again before it returns.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import httpx
import psutil
import pytest

from bestofk.tooling.procs import Server

# About 410 tokens of the demo tokenizer: several of these exceed one step's token budget
# (2048 on CPU), so vLLM chunks their prefills, which is what used to kill seeded requests.
LONG_PROMPT = ("The quick brown fox jumps over the lazy dog near the river bank. " * 14)[:820]


def _seeded(seed: int) -> dict[str, object]:
    return {
        "prompt": LONG_PROMPT + "\nWhat's the factorial of 5?",
        "k": 8,
        "sampling": {"max_tokens": 48, "seed": seed, "temperature": 1.0},
    }


def _texts(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return sorted(c["text"] for c in response.json()["candidates"])


async def test_seeded_burst_survives_and_reproduces(server: Server) -> None:
    seeds = (101, 102, 103)
    async with httpx.AsyncClient(base_url=server.url, timeout=300) as client:
        alone = {seed: _texts(await client.post("/generate", json=_seeded(seed))) for seed in seeds}
        burst = await asyncio.gather(
            *(client.post("/generate", json=_seeded(seeds[i % 3])) for i in range(48))
        )
        statuses = [r.status_code for r in burst]
        assert statuses == [200] * len(burst), f"{statuses}\n{server.log_tail()}"
        for i, response in enumerate(burst):
            assert _texts(response) == alone[seeds[i % 3]], (
                "a seed gave other candidates under load"
            )
        assert (await client.get("/health")).status_code == 200


def _engine_worker(server: Server) -> psutil.Process:
    workers = [
        p
        for p in psutil.Process(server.process.pid).children(recursive=True)
        if "VLLM::Worker" in " ".join(p.cmdline())
    ]
    assert workers, f"no vLLM worker under the server:\n{server.log_tail()}"
    return workers[0]


def _gauge(metrics: httpx.Response, name: str) -> float:
    """The sum of ``name``'s samples in a /metrics answer."""
    values = [
        float(line.rsplit(" ", 1)[1])
        for line in metrics.text.splitlines()
        if line.split("{", 1)[0].split(" ", 1)[0] == name
    ]
    if not values:
        raise AssertionError(f"{name} is not exported")
    return sum(values)


def _restarts(server: Server) -> float:
    return _gauge(httpx.get(server.url + "/metrics", timeout=10), "bestofk_engine_restarts_total")


async def test_killed_engine_is_restarted(server: Server) -> None:
    before = _restarts(server)
    worker = _engine_worker(server)
    # As long as the demo model's context allows (a few seconds on a quiet machine).
    long_request = {
        "prompt": "Tell me a long story.",
        "k": 16,
        "sampling": {"max_tokens": 480, "min_tokens": 480},
    }
    async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
        in_flight = [asyncio.create_task(client.post("/generate", json=long_request))]
        while _gauge(await client.get("/metrics"), "bestofk_inflight_requests") < 1:
            assert not in_flight[0].done(), in_flight[0].result().text
            await asyncio.sleep(0.02)
        os.kill(worker.pid, signal.SIGKILL)
        cut = await asyncio.gather(*in_flight)
        for response in cut:
            assert response.status_code == 503, response.text
            assert response.json()["error"]["type"] == "overloaded_error"
            assert int(response.headers["retry-after"]) >= 1
        seen: set[str] = set()
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            health = await client.get("/health")
            seen.add(health.json()["status"])
            if health.status_code == 200:
                break
            assert health.status_code == 503
            await asyncio.sleep(0.5)
        else:
            pytest.fail(f"the engine did not come back; /health said {seen}\n{server.log_tail()}")
        assert seen & {"engine_dead", "restarting"}, seen
        again = await client.post(
            "/generate", json={"prompt": "What's 5!?", "k": 2, "sampling": {"max_tokens": 4}}
        )
        assert again.status_code == 200, again.text
    assert _restarts(server) == before + 1
    assert not psutil.pid_exists(worker.pid) or worker.status() == psutil.STATUS_ZOMBIE
