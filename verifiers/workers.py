"""WorkerPool: CPU-bound verifier work in a few worker processes, bounded in time and memory.

Run in a thread, a verifier's CPU work (jsonschema, a backtracking regex, sympy) holds the GIL,
so the event loop and ``/health`` wait behind it; nothing can stop it at the request's deadline;
and what it allocates is the server's memory, kept after it ends. In a worker process:

- the parent SIGKILLs the worker when a job runs past its wall budget or the caller is
  cancelled (deadline, client gone), and starts a fresh one;
- RLIMIT_AS bounds its memory: a blow-up is a MemoryError in the worker, which then exits;
- RLIMIT_CPU, raised before each job to the job's budget, is a belt should the parent be wedged;
- PR_SET_PDEATHSIG and EOF on its socket end it with the service (see
:mod:`bestofk.verifiers.sandbox.spawner`).

The pool starts its ``size`` workers on first use. A job waits for a free worker in a bounded
queue; one more than ``max_queue`` is :class:`~bestofk.verifiers.base.VerifierCapacityError` (503 +
Retry-After). Jobs are module-level functions with plain arguments, pickled over a socket pair
that the event loop reads itself (no thread hop). A worker runs only this project's code, on
hostile data: it is a resource boundary, not a security one (candidate *code* runs in the
sandbox). Callers go through :func:`bestofk.verifiers.base.run_bounded`, which keeps cheap work
inline.

    python -m bestofk.verifiers.workers FD MEMORY_BYTES PARENT_PID     # what a worker runs
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import importlib
import logging
import os
import pickle
import resource
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from bestofk.verifiers.base import VerifierCapacityError
from bestofk.verifiers.sandbox.slots import Slots, fail
from bestofk.verifiers.sandbox.spawner import on_spawner_thread

__all__ = ["WorkerLimits", "WorkerPool", "default_pool"]

log = logging.getLogger(__name__)

T = TypeVar("T")

_HEADER = struct.Struct("!Q")
PRELOAD = (
    "bestofk.verifiers.json_schema",
    "bestofk.verifiers.style",
    "bestofk.verifiers.answers",
    "math_verify",
)
"""Imported by each worker before it says ready, so no job's budget is spent importing."""
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True, slots=True)
class WorkerLimits:
    """What one job may use."""

    budget_s: float = 5.0
    """Wall time of one job, from when its worker takes it; past it the worker is killed."""
    memory_bytes: int = 512 << 20
    """Each worker's address space (RLIMIT_AS); past it the job fails with MemoryError."""


class WorkerDiedError(RuntimeError):
    """A worker ended in the middle of a job (killed from outside, SIGXCPU, a crash)."""


class _Worker:
    """One worker process and the parent's end of its socket. Started on the spawner thread."""

    def __init__(self, limits: WorkerLimits) -> None:
        parent, child = socket.socketpair()
        # The same interpreter and environment import bestofk as this process did (installed,
        # editable, PYTHONPATH); -P leaves the working directory off sys.path, so a checkout's
        # bare `service` or `verifiers` folder is never importable in a worker.
        argv = [sys.executable, "-P", "-m", "bestofk.verifiers.workers"]
        argv += [str(child.fileno()), str(limits.memory_bytes), str(os.getpid())]
        try:
            self.process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, pass_fds=(child.fileno(),)
            )
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
        parent.setblocking(False)
        self._sock = parent
        self.ready = False

    async def call(self, payload: bytes) -> bytes:
        """Send one job, return its pickled result."""
        await asyncio.get_running_loop().sock_sendall(
            self._sock, _HEADER.pack(len(payload)) + payload
        )
        return await self.receive()

    async def receive(self) -> bytes:
        """One message from the worker; WorkerDiedError at EOF."""
        (size,) = _HEADER.unpack(await self._read(_HEADER.size))
        return await self._read(size)

    async def _read(self, size: int) -> bytes:
        loop = asyncio.get_running_loop()
        data = bytearray(size)
        view, got = memoryview(data), 0
        while got < size:
            n = await loop.sock_recv_into(self._sock, view[got:])
            if n == 0:
                raise WorkerDiedError(f"the verifier worker died ({self._how_it_ended()})")
            got += n
        return bytes(data)

    def _how_it_ended(self) -> str:
        code = self.process.poll()
        if code is None:
            return "it closed its socket"
        if code < 0:
            return f"killed by {signal.Signals(-code).name}"
        return f"exit status {code}"

    def kill(self) -> None:
        """SIGKILL it (not yet reaped, so the pid is still ours) and close our end."""
        with contextlib.suppress(OSError):
            self.process.kill()
        self._sock.close()

    def reap(self) -> None:
        """Wait for the killed process (on the spawner thread: never blocks the loop)."""
        self.process.wait()


class WorkerPool:
    """Runs jobs in at most ``size`` worker processes; ``max_queue`` more may wait."""

    def __init__(
        self, size: int = 2, *, max_queue: int = 2048, limits: WorkerLimits | None = None
    ) -> None:
        if size < 1 or max_queue < 0:
            raise ValueError("size must be >= 1 and max_queue >= 0")
        self.limits = limits or WorkerLimits()
        self._size = size
        self._max_queue = max_queue
        self._lock = threading.Lock()
        self._workers: set[_Worker] = set()
        """Started and not discarded: idle or busy."""
        # Idle workers, the one used last first (its caches are warm); a worker freed after
        # the pool closed or discarded it is dropped.
        self._queue: Slots[_Worker] = Slots(self._lock, lifo=True, keep=self._workers.__contains__)
        self._starting = 0
        self._mean_job_s = 0.05
        self._closed = False

    @property
    def pids(self) -> list[int]:
        """The worker processes alive now."""
        with self._lock:
            return sorted(w.process.pid for w in self._workers)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in a worker, within the limits. Raises what ``fn`` raised,
        TimeoutError past the budget, MemoryError past the memory bound, WorkerDiedError,
        or VerifierCapacityError when the queue is full. Cancelling kills the worker."""
        payload = pickle.dumps((fn, args, self.limits.budget_s))
        worker = await self._acquire()
        try:
            if not worker.ready:
                await self._ready(worker)
        except BaseException:
            self._discard(worker)
            raise
        start = time.perf_counter()
        try:
            async with asyncio.timeout(self.limits.budget_s):
                status, value = pickle.loads(await worker.call(payload))
        except TimeoutError:
            self._discard(worker)
            raise TimeoutError(
                f"ran past its {self.limits.budget_s:g}s time budget; its worker was stopped"
            ) from None
        except BaseException:  # cancelled mid-job (deadline, client gone), or the worker died
            self._discard(worker)
            raise
        self._mean_job_s = 0.8 * self._mean_job_s + 0.2 * (time.perf_counter() - start)
        if status == "memory":
            self._discard(worker)  # it exits by itself: a fresh heap for the next job
            raise MemoryError(f"ran past its {self.limits.memory_bytes >> 20} MiB memory budget")
        self._queue.release(worker)
        if status == "error":
            raise cast(BaseException, value)
        return cast(T, value)

    @staticmethod
    async def _ready(worker: _Worker) -> None:
        """Wait for a new worker's hello (imports done, limits set): no job's budget is spent
        on it. A worker that never says it bounds nothing: the caller's deadline ends the wait
        and the worker is replaced."""
        await worker.receive()
        worker.ready = True

    def close(self) -> None:
        """Kill and reap every worker; jobs in flight fail. Idempotent."""
        with self._lock:
            self._closed = True
            workers = list(self._workers)
            self._workers.clear()
            self._queue.free.clear()
            waiters = self._queue.take_waiters()
        fail(waiters, lambda: _no_worker("the pool closed"))
        # The spawner thread works in order: once this no-op ran, every start and reap queued
        # before it is done, and a start that finished after the close killed its own worker.
        on_spawner_thread(lambda: None).result(timeout=30)
        for worker in workers:
            worker.kill()
            worker.reap()

    async def _acquire(self) -> _Worker:
        waiter: asyncio.Future[_Worker] | None = None
        with self._lock:
            if self._closed:
                raise RuntimeError("the verifier worker pool is closed")
            starts = self._fill()
            idle = self._queue.take()
            queued = len(self._queue.waiters)
            if idle is None and queued < self._max_queue:
                waiter = self._queue.enqueue()
        self._watch(starts)
        if idle is not None:
            return idle
        if waiter is None:
            raise VerifierCapacityError(
                f"all {self._size} verifier workers are busy and {self._max_queue} jobs are queued",
                max(1.0, self._mean_job_s * (queued + 1) / self._size),
            )
        return await self._queue.wait(waiter)

    def _fill(self) -> list[Future[_Worker]]:
        """Start workers up to ``size`` (called with the lock held); the caller hands the
        starts to :meth:`_watch` once it has let go of the lock."""
        starts = []
        while not self._closed and len(self._workers) + self._starting < self._size:
            self._starting += 1
            starts.append(on_spawner_thread(lambda: _Worker(self.limits)))
        return starts

    def _watch(self, starts: list[Future[_Worker]]) -> None:
        """Call :meth:`_started` as each start finishes. Never with the lock held: a start
        already done runs its callback at once, here, and that callback takes the lock."""
        for start in starts:
            start.add_done_callback(self._started)

    def _started(self, started: Future[_Worker]) -> None:
        """On the spawner thread: a start finished."""
        error = started.exception()
        worker = None if error is not None else started.result()
        orphans: list[asyncio.Future[_Worker]] = []
        with self._lock:
            self._starting -= 1
            closed = self._closed
            if worker is not None and not closed:
                self._workers.add(worker)
            elif worker is None and not self._workers and not self._starting:
                orphans = self._queue.take_waiters()  # none left to serve them
        if worker is not None and closed:
            worker.kill()
            worker.reap()
        elif worker is not None:
            self._queue.release(worker)
        else:
            log.error("a verifier worker failed to start: %s", error)
        fail(orphans, lambda: _no_worker(str(error)))

    def _discard(self, worker: _Worker) -> None:
        """Kill a worker that may be busy, reap it off the loop, start its replacement."""
        worker.kill()
        with self._lock:
            self._workers.discard(worker)
            on_spawner_thread(worker.reap)
            starts = self._fill()
        self._watch(starts)


def _no_worker(why: str) -> RuntimeError:
    return RuntimeError(f"no verifier worker: {why}")


_default: WorkerPool | None = None
_default_lock = threading.Lock()


def default_pool() -> WorkerPool:
    """The pool verifiers use when the app gave them none (tests, library use)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = WorkerPool()
            atexit.register(_default.close)
        return _default


# --- inside a worker -----------------------------------------------------------------------


def _send(sock: socket.socket, data: bytes) -> None:
    sock.sendall(_HEADER.pack(len(data)) + data)


def _read_exactly(sock: socket.socket, size: int) -> bytes | None:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(min(size - len(data), 1 << 20))
        if not chunk:
            return None
        data += chunk
    return bytes(data)


def _receive(sock: socket.socket) -> bytes | None:
    """One message, or None at EOF (the service closed its end, or died)."""
    header = _read_exactly(sock, _HEADER.size)
    return None if header is None else _read_exactly(sock, _HEADER.unpack(header)[0])


def _cpu_budget(budget_s: float) -> None:
    """RLIMIT_CPU at the CPU used so far plus this job's budget: SIGXCPU past it."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    soft = int(usage.ru_utime + usage.ru_stime + budget_s) + 2
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def _serve(fd: int, memory_bytes: int, parent: int) -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the service died before the prctl
        return
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the group: the service stops us
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    for module in PRELOAD:
        importlib.import_module(module)
    sock = socket.socket(fileno=fd)
    _send(sock, b"")  # ready
    while (payload := _receive(sock)) is not None:
        fn, args, budget_s = pickle.loads(payload)
        _cpu_budget(budget_s)
        status, value = "ok", None
        try:
            value = fn(*args)
        except MemoryError:
            status = "memory"
        except Exception as exc:
            status, value = "error", exc
        try:
            reply = pickle.dumps((status, value))
        except Exception:  # an unpicklable result or exception: say what it was
            reply = pickle.dumps(("error", RuntimeError(f"{type(value).__name__}: {value}")))
        _send(sock, reply)
        if status == "memory":
            return


if __name__ == "__main__":
    _serve(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
