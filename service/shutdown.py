"""Draining at SIGTERM: readiness fails at once, work in flight finishes, what is left is cut.

uvicorn's own graceful shutdown first closes the listening socket, so a client that a load
balancer still sends here meets a refused connection, and past its timeout it cancels requests
midway (which reached clients as 499, a status they do not retry). Before handing over to it,
the server drains:

1. ``/health`` answers 503 ``draining`` and new requests 503 with Retry-After, so balancers
   and clients move on while the socket still answers;
2. requests in flight get ``shutdown_grace_s`` to finish;
3. whatever still runs is cut with 503 and Retry-After (a stream gets an error event);

then uvicorn shuts down as before, with nothing left to wait for. A second signal skips the
drain. The orchestrator's own grace period must be longer than ``shutdown_grace_s`` (the
Kubernetes manifests set ``terminationGracePeriodSeconds`` accordingly).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable
from types import FrameType

from bestofk.service.runtime import Runtime

log = logging.getLogger(__name__)
SIGNALS = (signal.SIGTERM, signal.SIGINT)
FLUSH_S = 2.0
"""After a cut, how long the cancelled requests get to send their 503s."""


def install(runtime: Runtime, grace_s: float) -> Callable[[], None]:
    """Drain ``runtime`` on SIGTERM/SIGINT before the handlers found here (uvicorn's) run.

    Call from the running loop's (main) thread; returns a function that puts them back."""
    loop = asyncio.get_running_loop()
    previous = {sig: signal.getsignal(sig) for sig in SIGNALS}
    draining: list[asyncio.Task[None]] = []

    def hand_over(signum: int, frame: FrameType | None) -> None:
        handler = previous[signal.Signals(signum)]
        if callable(handler):
            handler(signum, frame)
        elif handler == signal.SIG_DFL:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    async def drain(signum: int, frame: FrameType | None) -> None:
        runtime.draining = True
        log.warning(
            "draining: %d request(s) in flight get %g s to finish; new ones get 503",
            runtime.inflight,
            grace_s,
        )
        if not await runtime.wait_idle(grace_s):
            log.warning("grace period over: cutting %d request(s) with 503", runtime.inflight)
            runtime.cut()
            await runtime.wait_idle(FLUSH_S)
        hand_over(signum, frame)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if draining:  # a second signal: stop now, as uvicorn does on its own second signal
            hand_over(signum, frame)
            return
        loop.call_soon_threadsafe(lambda: draining.append(loop.create_task(drain(signum, frame))))

    for sig in SIGNALS:
        signal.signal(sig, on_signal)

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    return restore
