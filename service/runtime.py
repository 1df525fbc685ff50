"""What a running server holds, and the one way a job is executed for an HTTP request."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from bestofk.service.admission import Admission
from bestofk.service.engines.base import Engine
from bestofk.service.engines.errors import EngineError
from bestofk.service.errors import BestOfKError, EngineNotReadyError, ShuttingDownError, api_error
from bestofk.service.history import History
from bestofk.service.job_run import JobRun
from bestofk.service.jobs import JobFactory
from bestofk.service.load import LoadAwareK
from bestofk.service.metrics import Metrics
from bestofk.service.pipeline import Pipeline
from bestofk.service.records.recorder import Recorder
from bestofk.service.rerank import RerankJob, RerankResult
from bestofk.service.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")

ClientGone = Callable[[], Coroutine[Any, Any, None]]
"""The edge's wait for its client to leave (``routes.common.client_gone`` for HTTP): a
request whose client leaves is cancelled."""


class ClientDisconnectedError(BestOfKError):
    """The client went away; its work was cancelled (nobody reads this status)."""

    status_code = 499
    error_type = "client_closed_request"
    default_code = "client_closed_request"


@dataclass(slots=True)
class Runtime:
    """The engine, the pipeline over it, and the factory that turns requests into jobs."""

    settings: Settings
    engine: Engine
    pipeline: Pipeline
    jobs: JobFactory
    admission: Admission
    metrics: Metrics
    """The app's metrics (also ``app.state.metrics``, where the middleware and /metrics use it)."""
    recorder: Recorder | None = None
    """Appends every result to the record files (``--record-dir``); None when not recording."""
    history: History | None = None
    """The recent results the trace pages show (``/ui``); None with ``--no-ui``."""
    load: LoadAwareK | None = None
    """Load-aware K (``--load-aware-k``): sizes each job's K to the engine's free slots."""
    draining: bool = False
    """Set at SIGTERM (:mod:`bestofk.service.shutdown`): new requests are refused with 503."""
    inflight: int = 0
    _cutting: bool = False
    _running: set[asyncio.Future[Any]] = field(default_factory=set)
    """The pipeline work of every request in flight, for :meth:`cut` to cancel."""
    _idle: asyncio.Event = field(default_factory=asyncio.Event)

    @contextlib.asynccontextmanager
    async def admitted(self, *, needs_engine: bool, openai: bool = False) -> AsyncIterator[None]:
        """Hold an in-flight slot, or refuse the request now with the reason.

        Everything that can be known before work starts is checked here, so a streaming
        response can refuse with a proper status before its first byte. ``openai``: refuse
        overload with 429, which OpenAI clients expect.
        """
        if self.draining:
            raise ShuttingDownError(
                "the server is shutting down; retry on another replica", retry_after_s=1
            )
        if needs_engine and not (health := self.engine.health).ready:
            raise EngineNotReadyError(
                f"the engine is not ready: {health.status} ({health.detail})",
                retry_after_s=health.retry_after_s,
            )
        await self.admission.acquire(rate_limit_status=openai)
        self.metrics.admitted()
        self.inflight += 1
        self._idle.clear()
        try:
            yield
        finally:
            self.inflight -= 1
            self.admission.release()
            self.metrics.released()
            if not self.inflight:
                self._idle.set()

    async def execute(
        self, job: RerankJob, gone: ClientGone | None = None, openai: bool = False
    ) -> RerankResult:
        """Admit and run ``job``."""
        async with self.admitted(needs_engine=job.given is None, openai=openai):
            return await self.run(job, gone)

    async def run(
        self, job: RerankJob, gone: ClientGone | None = None, prepared: JobRun | None = None
    ) -> RerankResult:
        """Run an admitted ``job``; cancel it (aborting generation and sandbox runs) if the
        client leaves (``gone`` returns) or the server cuts it at the end of its shutdown
        grace period."""
        with self.sized(job) as job:
            if prepared is not None:
                prepared.job = job
            result = await self._guarded(self.pipeline.run(job, prepared), gone)
        self._finished(job, result)
        return result

    @contextlib.contextmanager
    def sized(self, job: RerankJob) -> Iterator[RerankJob]:
        """``job`` with the K the load allows (load-aware K), its candidates counted in flight
        for the body of the ``with``; ``job`` itself when load-aware K is off."""
        load = self.load
        if load is None or job.given is not None:
            yield job
            return
        k = load.choose(job.k, self.admission.waiting)
        if k < job.k:
            self.metrics.load_reduced()
            log.info("request %s: K %d -> %d (engine saturated)", job.request_id, job.k, k)
            job = replace(job, k=k)
        with load.holding(k):
            yield job

    def _finished(self, job: RerankJob, result: RerankResult) -> None:
        self.metrics.observe(result)
        if self.recorder is not None:  # queues without waiting; a full queue drops, never blocks
            self.recorder.submit(job, result, job.profile)
        if self.history is not None:
            self.history.add(job, result, job.profile)

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for no request to be in flight; True if none is."""
        if self.inflight:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), timeout_s)
        return not self.inflight

    def cut(self) -> None:
        """Cancel every job in flight with 503 + Retry-After (the shutdown grace is over)."""
        self._cutting = True
        for work in self._running:
            work.cancel()

    async def _guarded(self, work: Awaitable[T], gone: ClientGone | None) -> T:
        task = asyncio.ensure_future(work)
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        watcher = None
        if gone is not None:
            # The client's leaving cancels the work by a callback, so awaiting the work alone
            # (no asyncio.wait, and its futures, per request) sees both.
            watcher = asyncio.create_task(gone())
            watcher.add_done_callback(lambda _: task.cancel())
        try:
            return await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # this request itself was cancelled (awaiting cancelled the work too)
            if watcher is not None and watcher.done() and not watcher.cancelled():
                log.info("client disconnected; request cancelled")
                raise ClientDisconnectedError("client disconnected") from None
            if self._cutting:
                log.warning("request cut at the end of the shutdown grace period")
                raise ShuttingDownError(
                    "the server shut down before this request finished; retry it",
                    retry_after_s=1,
                ) from None
            raise
        except EngineError as exc:
            # Engines speak their own errors; every job's leave here, so every route (a
            # streaming one too, whose status line is out) meets the API's.
            raise api_error(exc) from exc
        finally:
            if watcher is not None:
                watcher.cancel()

    async def execute_batch(
        self, jobs: Sequence[RerankJob], gone: ClientGone | None = None, openai: bool = False
    ) -> list[RerankResult]:
        """Run ``jobs`` concurrently as one admitted request (a batch endpoint such as
        ``/get_reward`` or a list of prompts holds one slot, not one per job); cancel all if
        the client leaves."""
        needs_engine = any(job.given is None for job in jobs)
        async with self.admitted(needs_engine=needs_engine, openai=openai):
            with contextlib.ExitStack() as held:
                jobs = [held.enter_context(self.sized(job)) for job in jobs]
                run = asyncio.gather(*(self.pipeline.run(job) for job in jobs))
                results = await self._guarded(run, gone)
        for job, result in zip(jobs, results, strict=True):
            self._finished(job, result)
        return list(results)
