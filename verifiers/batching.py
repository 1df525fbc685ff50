"""Coalesce per-candidate model calls into one batch.

Pointwise verifiers are called once per candidate, as each finishes. A model-backed one (judge,
reward model) would rather send one batch than K calls. :class:`Coalescer` collects the items
submitted at the same moment (same pass of the event loop: all K of a ``/verify`` request,
or the candidates that finish together) and hands them to one batch call; an item that arrives
later starts the next batch rather than waiting for stragglers, so early exit still works.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

MAX_SETTLE_PASSES = 16
"""Loop passes to wait for more submissions; enough for pipeline task fan-out to settle."""


class Coalescer(Generic[T, R]):
    """Batches items submitted together; each caller gets its own result (or exception)."""

    def __init__(
        self,
        run_batch: Callable[[Sequence[T]], Awaitable[Sequence[R]]],
        max_batch: int = 64,
    ) -> None:
        self._run_batch = run_batch
        self._max_batch = max_batch
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, item: T) -> R:
        """Queue ``item`` for the next batch and wait for its result."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._flusher is None:
            self._start_flush()
        return await future

    def _start_flush(self) -> None:
        self._flusher = asyncio.create_task(self._flush())
        # The loop holds tasks weakly; keep each until it is done.
        self._tasks.add(self._flusher)
        self._flusher.add_done_callback(self._tasks.discard)

    async def _flush(self) -> None:
        # Yield until a whole loop pass adds nothing: by then every caller that was ready
        # at the same moment has submitted. No wall-clock wait is added.
        seen = -1
        for _ in range(MAX_SETTLE_PASSES):
            if len(self._pending) == seen or len(self._pending) >= self._max_batch:
                break
            seen = len(self._pending)
            await asyncio.sleep(0)
        batch, self._pending = self._pending[: self._max_batch], self._pending[self._max_batch :]
        self._flusher = None
        if self._pending:
            self._start_flush()
        live = [(item, f) for item, f in batch if not f.done()]
        if not live:
            return
        this = asyncio.current_task()
        assert this is not None
        for _, future in live:
            # Every caller gone (timeout, deadline): stop the batch instead of finishing it.
            future.add_done_callback(lambda _f: _cancel_if_orphaned(this, live))
        try:
            results = await self._run_batch([item for item, _ in live])
        except asyncio.CancelledError:
            for _, future in live:
                future.cancel()
            return
        except Exception as exc:
            for _, future in live:
                if not future.done():
                    future.set_exception(exc)
            return
        if len(results) != len(live):
            error = RuntimeError(f"batch returned {len(results)} results for {len(live)} items")
            for _, future in live:
                if not future.done():
                    future.set_exception(error)
            return
        for (_, future), result in zip(live, results, strict=True):
            if not future.done():
                future.set_result(result)


def _cancel_if_orphaned(
    runner: asyncio.Task[Any], live: Sequence[tuple[Any, asyncio.Future[Any]]]
) -> None:
    if not runner.done() and all(f.cancelled() for _, f in live):
        runner.cancel()
