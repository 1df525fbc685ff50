"""The slot queue the sandbox pool and the worker pool share: items freed on any thread reach
waiters on any loop, in order, and none is lost when a waiter gives up mid hand-over.

Pure concurrency logic, so plain items stand in for slots and workers; the pools' own tests
(test_sandbox.py, test_unit_tests_verifier.py, test_workers.py) run it with real ones."""

from __future__ import annotations

import asyncio
import threading

import pytest

from bestofk.verifiers.sandbox.slots import Slots, fail


async def _waiting(slots: Slots[str], timeout_s: float | None = None) -> asyncio.Task[str]:
    """A task in line for an item (it has enqueued when this returns)."""
    with slots.lock:
        waiter = slots.enqueue()
    task = asyncio.create_task(slots.wait(waiter, timeout_s))
    await asyncio.sleep(0)
    return task


async def test_items_freed_on_other_threads_reach_waiters_in_order() -> None:
    slots: Slots[str] = Slots(threading.Lock())
    first, second = await _waiting(slots), await _waiting(slots)
    for item in ("a", "b"):
        thread = threading.Thread(target=slots.release, args=(item,))
        thread.start()
        thread.join()
    assert [await first, await second] == ["a", "b"]
    assert not slots.waiters and not slots.free


async def test_a_waiter_cancelled_during_its_hand_over_passes_the_item_on() -> None:
    slots: Slots[str] = Slots(threading.Lock())
    quitter, patient = await _waiting(slots), await _waiting(slots)
    slots.release("a")  # the hand-over to the quitter is scheduled, not run yet
    quitter.cancel()
    assert await asyncio.wait_for(patient, 10) == "a"
    with pytest.raises(asyncio.CancelledError):
        await quitter
    assert not slots.free


async def test_a_waiter_cancelled_before_the_release_is_skipped() -> None:
    slots: Slots[str] = Slots(threading.Lock())
    quitter, patient = await _waiting(slots), await _waiting(slots)
    quitter.cancel()
    slots.release("a")  # may pop the quitter before its cancellation has run
    assert await asyncio.wait_for(patient, 10) == "a"
    assert not slots.free and not slots.waiters


async def test_a_timed_out_waiter_leaves_the_line_and_the_item_stays_free() -> None:
    slots: Slots[str] = Slots(threading.Lock())
    late = await _waiting(slots, timeout_s=0.01)
    with pytest.raises(TimeoutError):
        await late
    assert not slots.waiters
    slots.release("a")
    assert list(slots.free) == ["a"]


def test_a_waiter_on_another_loop_gets_the_item() -> None:
    """The server's loop frees, a library caller's loop in another thread waits."""
    slots: Slots[str] = Slots(threading.Lock())
    enqueued = threading.Event()
    got: list[str] = []

    async def wait_elsewhere() -> None:
        with slots.lock:
            waiter = slots.enqueue()
        enqueued.set()
        got.append(await slots.wait(waiter, 10))

    thread = threading.Thread(target=asyncio.run, args=(wait_elsewhere(),))
    thread.start()
    assert enqueued.wait(10)

    async def release_here() -> None:
        slots.release("a")

    asyncio.run(release_here())
    thread.join(10)
    assert got == ["a"]


async def test_lifo_keep_and_fail() -> None:
    alive = {"a", "b"}
    slots: Slots[str] = Slots(threading.Lock(), ["a", "b"], lifo=True, keep=alive.__contains__)
    with slots.lock:
        assert slots.take() == "b"  # the one freed last
    alive.discard("b")
    slots.release("b")  # dropped: its owner discarded it meanwhile
    assert list(slots.free) == ["a"]
    with slots.lock:
        assert slots.take() == "a"
        assert slots.take() is None
    waiting = await _waiting(slots)
    with slots.lock:
        waiters = slots.take_waiters()
    fail(waiters, lambda: RuntimeError("the pool closed"))
    with pytest.raises(RuntimeError, match="the pool closed"):
        await waiting
