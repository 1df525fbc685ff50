"""The verifier worker pool: real worker processes, killed at their budget or when cancelled.

Jobs are builtins (``pow``, ``sum``, ``bytearray``) so that workers need no test code.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from bestofk.verifiers import workers
from bestofk.verifiers.base import VerifierCapacityError
from bestofk.verifiers.workers import WorkerLimits, WorkerPool

ROOT = Path(__file__).resolve().parent.parent

FOREVER = range(10**15)
"""``sum(FOREVER)`` spins far past any budget."""


def gone(pid: int) -> bool:
    """Whether ``pid`` has exited and been reaped (no zombie left)."""
    return not Path(f"/proc/{pid}").exists()


def wait_gone(pids: list[int], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not all(gone(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert all(gone(pid) for pid in pids), [p for p in pids if not gone(p)]


@pytest.fixture
def pool() -> Iterator[WorkerPool]:
    workers = WorkerPool(1, max_queue=1, limits=WorkerLimits(budget_s=2.0, memory_bytes=256 << 20))
    try:
        yield workers
    finally:
        pids = workers.pids
        workers.close()
        wait_gone(pids)


async def test_results_and_errors_come_back(pool: WorkerPool) -> None:
    assert await pool.run(pow, 2, 10) == 1024
    with pytest.raises(ValueError, match="invalid literal"):
        await pool.run(int, "x")
    assert await pool.run(pow, 3, 2) == 9, "an error in a job leaves its worker usable"


async def test_workers_import_no_bare_package_even_from_the_checkout(
    pool: WorkerPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Started in the checkout's root (as ``make serve`` is), a worker still sees `service` and
    `verifiers` only as ``bestofk.…``: its PYTHONPATH is the server's, untouched."""
    monkeypatch.chdir(ROOT)
    assert await pool.run(os.getenv, "PYTHONPATH") == os.environ.get("PYTHONPATH")
    for bare in ("service", "verifiers", "tooling", "demo"):
        assert await pool.run(importlib.util.find_spec, bare) is None, bare
    assert await pool.run(importlib.util.find_spec, "bestofk.verifiers.regex") is not None


async def test_a_job_past_its_budget_is_killed_and_replaced(pool: WorkerPool) -> None:
    await pool.run(pow, 2, 2)
    [before] = pool.pids
    with pytest.raises(TimeoutError, match="2s time budget"):
        await pool.run(sum, FOREVER)
    wait_gone([before])
    assert await pool.run(pow, 2, 3) == 8
    assert pool.pids != [before]


async def test_memory_past_the_bound_is_a_memory_error_not_the_servers(pool: WorkerPool) -> None:
    with pytest.raises(MemoryError, match="256 MiB"):
        await pool.run(bytearray, 1 << 30)
    assert await pool.run(pow, 2, 4) == 16


async def test_cancelling_the_caller_kills_the_worker(pool: WorkerPool) -> None:
    await pool.run(pow, 2, 2)
    [before] = pool.pids
    job = asyncio.ensure_future(pool.run(sum, FOREVER))
    await asyncio.sleep(0.2)  # let it reach the worker
    job.cancel()
    with pytest.raises(asyncio.CancelledError):
        await job
    wait_gone([before])
    assert await pool.run(pow, 2, 5) == 32


async def test_a_full_queue_is_a_capacity_error(pool: WorkerPool) -> None:
    busy = asyncio.ensure_future(pool.run(sum, FOREVER))
    await asyncio.sleep(0.2)
    queued = asyncio.ensure_future(pool.run(pow, 2, 6))
    await asyncio.sleep(0)
    with pytest.raises(VerifierCapacityError, match="1 jobs are queued"):
        await pool.run(pow, 2, 7)
    busy.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await busy
    assert await queued == 64


def test_close_leaves_no_process() -> None:
    pool = WorkerPool(2)
    assert asyncio.run(pool.run(pow, 2, 8)) == 256
    deadline = time.monotonic() + 30
    while len(pool.pids) < 2 and time.monotonic() < deadline:  # the second one is starting
        time.sleep(0.02)
    pids = pool.pids
    assert len(pids) == 2 and all(os.getpgid(pid) == os.getpgid(0) for pid in pids)
    pool.close()
    assert all(gone(pid) for pid in pids), "close() reaps its workers before it returns"


def test_a_start_that_is_done_before_its_callback_is_added_does_not_deadlock(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A start can finish on the spawner thread before the pool adds its done callback; the
    callback then runs at once, in the caller, which holds the pool's lock. Seen in CI: the
    replacement of a killed worker hung the whole test session."""

    def at_once(fn: Callable[[], Any]) -> Future[Any]:
        future: Future[Any] = Future()
        future.set_result(fn())
        return future

    monkeypatch.setattr(workers, "on_spawner_thread", at_once)
    pool = WorkerPool(1, max_queue=1, limits=WorkerLimits(budget_s=2.0, memory_bytes=256 << 20))
    answers: list[int] = []
    thread = threading.Thread(
        target=lambda: answers.append(asyncio.run(pool.run(pow, 2, 5))), daemon=True
    )
    thread.start()
    thread.join(30)
    assert answers == [32], "the pool deadlocked on a start that was done at once"
    pids = pool.pids
    pool.close()
    wait_gone(pids)
