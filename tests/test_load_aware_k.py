"""Load-aware K (``--load-aware-k``): a saturated engine gives new requests a smaller K.

The server under test runs the real in-process engine with ``max_num_seqs=8`` and ``--min-k 2``:
a burst of K=8 requests fills the engine with the first one, so the rest get the floor.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bestofk.service.load import LoadAwareK
from bestofk.service.settings import Settings
from bestofk.tooling.procs import Server

# The demo's thinking family writes a few dozen tokens: every request of a burst is admitted
# while the first still decodes.
PROMPT = "Think step by step, then give the factorial of 8 as a number."
BODY = {"prompt": PROMPT, "k": 8, "sampling": {"temperature": 1.0, "max_tokens": 64}}


def reduced_total(server: Server) -> float:
    text = httpx.get(server.url + "/metrics", timeout=30).text
    for family in text_string_to_metric_families(text):
        if family.name == "bestofk_load_reduced_requests":
            return sum(s.value for s in family.samples if s.name.endswith("_total"))
    raise AssertionError("no bestofk_load_reduced_requests_total on /metrics")


async def burst(server: Server, n: int) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=server.url, timeout=300) as client:
        return await asyncio.gather(*(client.post("/generate", json=BODY) for _ in range(n)))


def test_a_burst_gets_smaller_k_down_to_the_floor(load_aware_server: Server) -> None:
    before = reduced_total(load_aware_server)
    responses = asyncio.run(burst(load_aware_server, 12))
    assert [r.status_code for r in responses] == [200] * 12
    stats = [r.json()["stats"] for r in responses]
    ks = sorted(s["k"] for s in stats)
    assert all(s["k_requested"] == 8 for s in stats)
    # The engine holds 8 sequences: the first request takes them all, the next find none free
    # and get the floor; none gets less than the floor or more than it asked.
    assert ks[-1] == 8 and ks[0] == 2, ks
    assert all(2 <= k <= 8 for k in ks)
    for response in responses:
        body = response.json()
        assert len(body["candidates"]) == body["stats"]["generated"] == body["stats"]["k"]
    assert reduced_total(load_aware_server) - before == sum(k < 8 for k in ks)


def test_an_idle_engine_gives_the_k_asked(load_aware_server: Server) -> None:
    asyncio.run(burst(load_aware_server, 4))  # every slot is given back when requests end
    response = httpx.post(load_aware_server.url + "/generate", json=BODY, timeout=300)
    assert response.status_code == 200
    assert response.json()["stats"]["k"] == response.json()["stats"]["k_requested"] == 8


def test_the_free_slots_bound_k_and_the_floor_bounds_them() -> None:
    load = LoadAwareK(engine=None, min_k=2, max_num_seqs=8)
    assert load.choose(8) == 8
    with load.holding(5):
        assert load.choose(8) == 3  # the free slots
        assert load.choose(2) == 2
        with load.holding(3):
            assert load.choose(8) == 2  # none free: the floor
            assert load.choose(1) == 1  # never more than asked
    assert load.inflight == 0
    assert load.choose(8, queued=1) == 2  # requests waiting for admission: saturated


def test_workers_share_the_slots() -> None:
    assert LoadAwareK(engine=None, min_k=1, max_num_seqs=64, workers=4).capacity == 16


def test_backends_need_their_capacity_named() -> None:
    with pytest.raises(ValueError, match="load_aware_max_num_seqs"):
        Settings(backends=["http://127.0.0.1:9"], load_aware_k=True)
    settings = Settings(
        backends=["http://127.0.0.1:9"], load_aware_k=True, load_aware_max_num_seqs=32
    )
    assert settings.load_aware_max_num_seqs == 32
