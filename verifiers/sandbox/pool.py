"""SandboxPool: N slots, each with two uids and a warm single-use sandbox, behind a queue.

Runs wait for a free slot in a bounded FIFO queue. A run that finds the queue full, or that
waits ``queue_timeout_s`` without getting a slot, raises :class:`SandboxBusyError` (HTTP 503
with its ``retry_after_s``). Each run's outcome (ok, fail, timeout, memory, killed, error) is
passed to ``on_outcome``, which the app wires to ``bestofk_sandbox_runs_total{outcome}``.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

import anyio.to_thread

from bestofk.verifiers.sandbox.bwrap import UNSAFE_ENV, Launcher, Limits
from bestofk.verifiers.sandbox.errors import SandboxBusyError, SandboxUnavailableError
from bestofk.verifiers.sandbox.grading import RunEnd, RunResult, judge
from bestofk.verifiers.sandbox.process import SandboxProcess, claim_uids, spawn
from bestofk.verifiers.sandbox.protocol import Job, RecordParser
from bestofk.verifiers.sandbox.slots import Slots

__all__ = ["DEFAULT_UID_BASE", "SandboxBusyError", "SandboxPool", "default_pool"]

log = logging.getLogger(__name__)

DEFAULT_UID_BASE = 60000


@dataclass(slots=True)
class _Slot:
    uids: tuple[int, int] | None
    """Two uids, alternating: the next run's sandbox starts under one while the current run
    uses the other, so the sweep after a run never meets a sandbox it must spare. None when
    the service is not root: sandboxes then run as the service's own uid."""
    lock_fds: list[int]
    ready: Future[SandboxProcess] | None = None

    def other_uid(self, uid: int | None) -> int | None:
        """The uid the next sandbox starts under."""
        if self.uids is None:
            return None
        return self.uids[1] if uid == self.uids[0] else self.uids[0]


class SandboxPool:
    """Runs jobs in sandboxes, at most ``slots`` at a time.

    - ``max_queue``: runs that may wait for a slot; one more raises SandboxBusyError.
    - ``queue_timeout_s``: how long a queued run waits before SandboxBusyError.
    - ``limits``: per-run resource limits (:class:`~bestofk.verifiers.sandbox.bwrap.Limits`).
    - ``uid_base``: where the search for free slot uids starts (used when running as root).
    - ``warm``: start each slot's next sandbox while the current run executes.
    - ``on_outcome``: called with every run's outcome (ok/fail/timeout/memory/killed/error).
    - ``unsafe``: without bwrap, run code unsandboxed instead of refusing (default: env
      ``BESTOFK_UNSAFE_NO_SANDBOX=1``). With bwrap installed it changes nothing.
    """

    def __init__(
        self,
        slots: int = 2,
        *,
        max_queue: int = 64,
        queue_timeout_s: float = 10.0,
        limits: Limits | None = None,
        uid_base: int = DEFAULT_UID_BASE,
        warm: bool = True,
        on_outcome: Callable[[str], None] | None = None,
        unsafe: bool | None = None,
    ) -> None:
        if slots < 1 or max_queue < 0 or queue_timeout_s < 0:
            raise ValueError("slots must be >= 1, max_queue and queue_timeout_s >= 0")
        self.limits = limits or Limits()
        self.unsafe = os.environ.get(UNSAFE_ENV) == "1" if unsafe is None else unsafe
        self._max_queue = max_queue
        self._queue_timeout_s = queue_timeout_s
        self._warm = warm
        self._on_outcome = on_outcome
        self._launcher: Launcher | None = None
        self._unavailable = ""
        try:
            self._launcher = Launcher.detect(self.limits, self.unsafe)
        except SandboxUnavailableError as exc:
            self._unavailable = str(exc)
        if self._launcher is not None and os.geteuid() == 0:
            claims = claim_uids(uid_base, 2 * slots)
            self._slots = [
                _Slot((claims[i][0], claims[i + 1][0]), [claims[i][1], claims[i + 1][1]])
                for i in range(0, 2 * slots, 2)
            ]
        else:
            self._slots = [_Slot(None, []) for _ in range(slots)]
        self._lock = threading.Lock()
        self._queue = Slots(self._lock, self._slots)
        self._mean_run_s = 0.1
        self._closed = False

    @property
    def uids(self) -> list[int]:
        """The host uids this pool's sandboxes run as (empty when not running as root)."""
        return [uid for slot in self._slots for uid in slot.uids or ()]

    @property
    def available(self) -> bool:
        """Whether runs can happen here (bwrap found, or unsafe mode)."""
        return self._launcher is not None

    async def run(self, job: Job) -> RunResult:
        """Run one job in a sandbox; raises SandboxBusyError or SandboxUnavailableError.

        Cancelling the caller kills the sandbox at once and frees its slot.
        """
        if self._launcher is None:
            self._count("error")
            raise SandboxUnavailableError(self._unavailable)
        slot = await self._acquire()
        abort_r, abort_w = os.pipe()
        # A thread, not a verifier worker: it waits on the sandbox's pipes rather than computes.
        # (The sandbox is a leaf, so it hops itself rather than through the verifiers' doorway.)
        run_in = anyio.to_thread.run_sync(self._run_in, slot, self._launcher, job, abort_r)
        work = asyncio.ensure_future(run_in)

        def finished(work: asyncio.Future[RunResult]) -> None:
            # The slot comes back when the thread is done with it, however the awaiting task
            # ended: anyio cancel scopes may cancel it again at every await.
            os.close(abort_r)
            os.close(abort_w)
            self._queue.release(slot)
            if work.cancelled():  # the loop itself is shutting down
                self._count("killed")
            else:
                self._count("error" if work.exception() else work.result().outcome)

        work.add_done_callback(finished)
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            if not work.done():
                os.write(abort_w, b"x")  # the run stops now: sandbox killed, slot freed
            raise

    def close(self) -> None:
        """Kill the waiting sandboxes and give up the slot uids. Runs in flight finish."""
        with self._lock:
            self._closed = True
            ready = [slot.ready for slot in self._slots if slot.ready is not None]
            for slot in self._slots:
                slot.ready = None
        for future in ready:
            with contextlib.suppress(Exception):  # it failed to start: nothing to kill
                future.result().kill()
        for slot in self._slots:
            for fd in slot.lock_fds:
                os.close(fd)
            slot.lock_fds.clear()

    def _run_in(self, slot: _Slot, launcher: Launcher, job: Job, abort_fd: int) -> RunResult:
        memory_mib = launcher.limits.memory_bytes >> 20
        try:
            sandbox = self._take(slot, launcher)
        except OSError as exc:
            return judge(job, RunEnd("spawn", RecordParser(None), str(exc)), memory_mib)
        if self._warm:
            # The next run's sandbox starts now, under the slot's other uid, so that its
            # start-up (mostly the kernel setting up namespaces) overlaps this run. It is as
            # fresh as a cold one: it will have done nothing but wait for its job.
            with self._lock:
                if not self._closed:
                    slot.ready = spawn(launcher, slot.other_uid(sandbox.uid))
        try:
            end = sandbox.execute(job, abort_fd)
        finally:
            sandbox.kill()
        self._mean_run_s = 0.8 * self._mean_run_s + 0.2 * end.elapsed_s
        return judge(job, end, memory_mib)

    def _take(self, slot: _Slot, launcher: Launcher) -> SandboxProcess:
        """The slot's warm sandbox if it started and is still waiting, else a new one."""
        ready, slot.ready = slot.ready, None
        uid = slot.uids[0] if slot.uids else None  # both are clean when no sandbox is ready
        if ready is not None:
            try:
                sandbox = ready.result()
            except OSError:
                log.exception("a warm sandbox failed to start; starting one cold")
            else:
                if sandbox.alive():
                    return sandbox
                uid = sandbox.uid
                sandbox.kill()
        return spawn(launcher, uid).result()

    async def _acquire(self) -> _Slot:
        with self._lock:
            if self._closed:
                raise SandboxUnavailableError("the sandbox pool is closed")
            if (slot := self._queue.take()) is not None:
                return slot
            if len(self._queue.waiters) >= self._max_queue:
                raise self._busy(f"{self._max_queue} runs are already queued")
            waiter = self._queue.enqueue()
        try:
            return await self._queue.wait(waiter, self._queue_timeout_s)
        except TimeoutError:
            raise self._busy(f"no slot came free in {self._queue_timeout_s:g}s") from None

    def _busy(self, why: str) -> SandboxBusyError:
        wait = self._mean_run_s * (len(self._queue.waiters) + 1) / len(self._slots)
        return SandboxBusyError(f"all {len(self._slots)} sandbox slots are busy: {why}", wait)

    def _count(self, outcome: str) -> None:
        if self._on_outcome is None:
            return
        try:
            self._on_outcome(outcome)
        except Exception:  # a metrics hook must never fail a run
            log.exception("sandbox on_outcome callback failed")


_default: SandboxPool | None = None
_default_lock = threading.Lock()


def default_pool() -> SandboxPool:
    """The pool a verifier uses when the app gave it none: created on first use."""
    global _default
    with _default_lock:
        if _default is None:
            _default = SandboxPool(slots=max(1, min(4, os.cpu_count() or 1)))
            atexit.register(_default.close)
        return _default
