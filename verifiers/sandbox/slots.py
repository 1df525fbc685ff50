"""Slots: free items (sandbox slots, worker processes) and the coroutines waiting for one.

Items come back from threads (a sandbox run's thread, the worker spawner) and are waited for on
any event loop (the server's, a test's, a library caller's), so a freed item is handed to the
first live waiter through that waiter's own loop (``call_soon_threadsafe``). A waiter that gives
up (timeout, cancellation) while a hand-over is on its way passes the item on, so none is lost.

The owner's lock guards both queues, so the owner can check its own state (closed, how many are
starting) in the same critical section: methods marked *locked* expect the caller to hold it.
It lives in the sandbox package, a leaf, so the sandbox pool imports nothing else from
``verifiers/`` (as with :mod:`~bestofk.verifiers.sandbox.spawner`, the workers' pool uses it).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

__all__ = ["Slots", "fail"]

T = TypeVar("T")


class Slots(Generic[T]):
    """Free items and FIFO waiters, shared by threads and event loops.

    - ``lock``: the owner's lock, held around every change to the queues.
    - ``lifo``: hand out the item freed last (a worker whose caches are warm) rather than the
      one free longest.
    - ``keep``: called under the lock on a freed item; False drops it (closed meanwhile).
    """

    def __init__(
        self,
        lock: threading.Lock,
        items: Iterable[T] = (),
        *,
        lifo: bool = False,
        keep: Callable[[T], bool] | None = None,
    ) -> None:
        self.lock = lock
        self.free: deque[T] = deque(items)
        self.waiters: deque[asyncio.Future[T]] = deque()
        self._lifo = lifo
        self._keep = keep

    def take(self) -> T | None:
        """A free item, or None (*locked*)."""
        if not self.free:
            return None
        return self.free.pop() if self._lifo else self.free.popleft()

    def enqueue(self) -> asyncio.Future[T]:
        """A new waiter on the running loop, last in line (*locked*)."""
        waiter: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        return waiter

    def take_waiters(self) -> list[asyncio.Future[T]]:
        """Every waiter, removed from the line, for :func:`fail` (*locked*)."""
        waiters, self.waiters = list(self.waiters), deque()
        return waiters

    async def wait(self, waiter: asyncio.Future[T], timeout_s: float | None = None) -> T:
        """The item ``waiter`` is handed; TimeoutError after ``timeout_s``.

        On a timeout or a cancellation the waiter leaves the line; an item handed to it just
        then is used (timeout) or passed on (cancellation), never lost.
        """
        try:
            # Shielded: a timeout must not cancel the waiter before the line is checked.
            return await asyncio.wait_for(asyncio.shield(waiter), timeout_s)
        except (TimeoutError, asyncio.CancelledError) as exc:
            handed: T | None = None
            with self.lock:
                if waiter in self.waiters:
                    self.waiters.remove(waiter)
                elif waiter.done():
                    if not waiter.cancelled() and waiter.exception() is None:
                        handed = waiter.result()
                else:  # a hand-over is scheduled: cancelling makes it pass the item on
                    waiter.cancel()
            if handed is not None and isinstance(exc, TimeoutError):
                return handed  # it came just as the wait ran out: use it
            if handed is not None:
                self.release(handed)
            raise

    def release(self, item: T) -> None:
        """Hand ``item`` to the first live waiter, else keep it free."""
        with self.lock:
            if self._keep is not None and not self._keep(item):
                return
            while self.waiters:
                waiter = self.waiters.popleft()
                if waiter.done():
                    continue
                with contextlib.suppress(RuntimeError):  # the waiter's loop is closed
                    waiter.get_loop().call_soon_threadsafe(self._hand_over, waiter, item)
                    return
            self.free.append(item)

    def _hand_over(self, waiter: asyncio.Future[T], item: T) -> None:
        if waiter.done():  # its owner gave up in the meantime
            self.release(item)
        else:
            waiter.set_result(item)


def fail(waiters: Iterable[asyncio.Future[T]], error: Callable[[], BaseException]) -> None:
    """Fail each of ``waiters`` with a fresh ``error()``, on its own loop; from any thread."""
    for waiter in waiters:
        with contextlib.suppress(RuntimeError):  # its loop is closed
            waiter.get_loop().call_soon_threadsafe(_set_exception, waiter, error)


def _set_exception(waiter: asyncio.Future[T], error: Callable[[], BaseException]) -> None:
    if not waiter.done():
        waiter.set_exception(error())
