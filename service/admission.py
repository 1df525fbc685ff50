"""Admission control: a bound on requests in flight and waiting, so memory stays bounded.

Past the bound a request is refused at once with Retry-After (429 on OpenAI routes, whose
clients expect it, 503 on the native API), rather than queueing without limit.
"""

from __future__ import annotations

import asyncio

from bestofk.service.errors import OverloadedError, RateLimitedError


class Admission:
    """At most ``max_inflight`` requests run; at most ``max_queued`` wait, each for a while."""

    def __init__(self, max_inflight: int, max_queued: int, queue_timeout_s: float) -> None:
        self.max_inflight = max_inflight
        self.max_queued = max_queued
        self.queue_timeout_s = queue_timeout_s
        self._slots = asyncio.Semaphore(max_inflight)
        self.waiting = 0

    async def acquire(self, rate_limit_status: bool = False) -> None:
        """Take one in-flight slot (give it back with :meth:`release`), waiting at most
        ``queue_timeout_s`` behind at most ``max_queued`` others; else refuse."""
        if not self._slots.locked():
            await self._slots.acquire()  # free: taken at once, no timer to arm
            return
        error = RateLimitedError if rate_limit_status else OverloadedError
        if self.waiting >= self.max_queued:
            raise error(
                f"server is at capacity ({self.max_inflight} in flight, "
                f"{self.waiting} waiting); retry later",
                retry_after_s=1.0,
            )
        self.waiting += 1
        try:
            async with asyncio.timeout(self.queue_timeout_s):
                await self._slots.acquire()
        except TimeoutError:
            raise error(
                f"no capacity freed up within {self.queue_timeout_s:g}s; retry later",
                retry_after_s=max(1.0, self.queue_timeout_s / 2),
            ) from None
        finally:
            self.waiting -= 1

    def release(self) -> None:
        """Give back a slot :meth:`acquire` took."""
        self._slots.release()
