"""What a running server holds, and the one way a job is executed for an HTTP request."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from starlette.requests import Request

from service import metrics
from service.admission import Admission
from service.engines.base import Engine
from service.errors import BestOfKError
from service.jobs import JobFactory
from service.pipeline import Pipeline, RerankJob, RerankResult
from service.records.recorder import Recorder
from service.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")


class ClientDisconnectedError(BestOfKError):
    """The client went away; its work was cancelled (nobody reads this status)."""

    status_code = 499
    error_type = "client_closed_request"


@dataclass(slots=True)
class Runtime:
    """The engine, the pipeline over it, and the factory that turns requests into jobs."""

    settings: Settings
    engine: Engine
    pipeline: Pipeline
    jobs: JobFactory
    admission: Admission
    recorder: Recorder | None = None
    """Appends every result to the record files (``--record-dir``); None when not recording."""

    async def execute(
        self, job: RerankJob, request: Request | None = None, openai: bool = False
    ) -> RerankResult:
        """Admit and run ``job``; cancel it (aborting generation and sandbox runs) if the
        client leaves. ``openai``: refuse overload with 429, which OpenAI clients expect."""
        async with self.admission.slot(rate_limit_status=openai):
            metrics.INFLIGHT.inc()
            try:
                run = self.pipeline.run(job)
                result = await (run if request is None else cancel_on_disconnect(run, request))
            finally:
                metrics.INFLIGHT.dec()
        metrics.observe(result)
        if self.recorder is not None:  # queues without waiting; a full queue drops, never blocks
            self.recorder.submit(job, result, job.profile)
        return result

    async def execute_batch(
        self, jobs: Sequence[RerankJob], request: Request | None = None
    ) -> list[RerankResult]:
        """Run ``jobs`` concurrently as one admitted request (a batch endpoint such as
        ``/get_reward`` holds one slot, not one per job); cancel all if the client leaves."""
        async with self.admission.slot():
            metrics.INFLIGHT.inc()
            try:
                run = asyncio.gather(*(self.pipeline.run(job) for job in jobs))
                results = await (run if request is None else cancel_on_disconnect(run, request))
            finally:
                metrics.INFLIGHT.dec()
        for job, result in zip(jobs, results, strict=True):
            metrics.observe(result)
            if self.recorder is not None:
                self.recorder.submit(job, result, job.profile)
        return list(results)


async def _wait_for_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def cancel_on_disconnect(work: Awaitable[T], request: Request) -> T:
    """Await ``work``, cancelling it if the client disconnects first."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.create_task(_wait_for_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            log.info("client disconnected; request cancelled")
            raise ClientDisconnectedError("client disconnected")
    return task.result()
