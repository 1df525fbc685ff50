"""The FastAPI application factory. Nothing global: every app owns its engine and pipeline."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import os
import signal
from collections.abc import AsyncIterator
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from bestofk.service import shutdown
from bestofk.service.admission import Admission
from bestofk.service.engines.base import Engine
from bestofk.service.engines.completer import EngineCompleter
from bestofk.service.engines.errors import EngineError
from bestofk.service.errors import BestOfKError, InvalidRequestError, NotFoundError, api_error
from bestofk.service.history import History
from bestofk.service.jobs import JobFactory
from bestofk.service.load import LoadAwareK
from bestofk.service.metrics import Metrics
from bestofk.service.middleware import (
    ApiKeyMiddleware,
    BodyLimitMiddleware,
    RequestMetricsMiddleware,
)
from bestofk.service.pipeline import Pipeline
from bestofk.service.reasoning import ReasoningParsers, tokenizer_loader
from bestofk.service.records.recorder import Recorder
from bestofk.service.routes import anthropic, native, openai, reward
from bestofk.service.runtime import Runtime
from bestofk.service.settings import Settings
from bestofk.verifiers.base import VerifierResources
from bestofk.verifiers.sandbox import SandboxPool
from bestofk.verifiers.workers import WorkerLimits, WorkerPool

log = logging.getLogger(__name__)


def build_engine(settings: Settings, metrics: Metrics) -> Engine:
    """The engine the settings ask for: remote backends if any are given, else in-process;
    it records its metrics (backends up, restarts) in ``metrics``."""
    if settings.engine == "openai":
        from bestofk.service.engines.openai_remote import OpenAIEngine

        return OpenAIEngine(settings, metrics)
    from bestofk.service.engines.vllm_local import VllmEngine

    return VllmEngine(settings, metrics)


def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    err = exc.errors()[0]
    loc = [str(p) for p in err.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    message = str(err.get("msg", "invalid request"))
    if err.get("type") == "json_invalid":
        why = str(err.get("ctx", {}).get("error", message))
        # pydantic's JSON parser stops at a nesting depth where json.loads would go on.
        if why.startswith("recursion limit exceeded"):
            return _error_response(request, _nested_too_deeply(why))
        message = f"the body is not valid JSON: {why}"
        param = None
    elif err.get("type") == "model_attributes_type" and not loc:
        # The framework reads a body as JSON only when its content-type says so (curl -d
        # without -H sends a form): say what to send, not what the model met.
        sent = request.headers.get("content-type", "none")
        message = (
            f"the body must be a JSON object sent with content-type: application/json "
            f"(this one came as {sent})"
        )
    elif param:
        message = f"{param}: {message}"
    return _error_response(request, InvalidRequestError(message, param=param))


def _nested_too_deeply(why: str) -> InvalidRequestError:
    """The error for a body past a JSON parser's nesting depth, whichever parser read it."""
    return InvalidRequestError(f"the body is nested too deeply ({why})")


def _error_response(request: Request, exc: BestOfKError) -> JSONResponse:
    body = exc.body_for(request.url.path)
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers())


def _bestofk_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, BestOfKError)
    return _error_response(request, exc)


def _engine_error(request: Request, exc: Exception) -> JSONResponse:
    """An engine's error that reached the edge outside a job (the runtime maps those)."""
    assert isinstance(exc, EngineError)
    return _error_response(request, api_error(exc))


def _http_error(request: Request, exc: Exception) -> JSONResponse:
    """The framework's own errors (unknown route, wrong method, unreadable body) in the API's
    envelope too, so clients meet one error shape."""
    assert isinstance(exc, StarletteHTTPException)
    if isinstance(exc.__cause__, RecursionError):
        # FastAPI parses the OpenAI and Anthropic bodies with json.loads, which gives up past the
        # interpreter's recursion limit; its "There was an error parsing the body" hides why.
        return _error_response(request, _nested_too_deeply(str(exc.__cause__)))
    error = NotFoundError if exc.status_code == 404 else InvalidRequestError
    # The phrase as a code, in OpenAI's string form: 405 -> "method_not_allowed".
    code = HTTPStatus(exc.status_code).phrase.lower().replace(" ", "_")
    body = error(str(exc.detail), code=code).body_for(request.url.path)
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    """A bug still answers in the envelope (Starlette logs the traceback after this)."""
    return _error_response(request, BestOfKError(f"internal error: {type(exc).__name__}"))


def create_app(
    settings: Settings,
    engine: Engine | None = None,
    exit_on_engine_failure: bool = False,
    drain_on_signal: bool = False,
    metrics: Metrics | None = None,
) -> FastAPI:
    """An app serving ``settings``; ``engine`` overrides the one the settings would build, and
    ``metrics`` is then the recorder it was built with (the app's, so ``/metrics`` shows what
    the engine records).

    ``exit_on_engine_failure``: a server process stops (SIGTERM to itself) when the engine
    cannot start, rather than answering 503 forever. ``drain_on_signal``: SIGTERM and SIGINT
    drain the server before uvicorn stops it (:mod:`bestofk.service.shutdown`); for the app of a
    server process, whose main thread runs the loop.
    """
    metrics = metrics or Metrics()
    engine = engine or build_engine(settings, metrics)
    resources = VerifierResources(
        completer=EngineCompleter(engine),
        # A judge endpoint or reward model named in a request is a URL or path the server
        # would reach on the client's behalf: only the operator's list, unless told otherwise.
        allowed_models=None
        if settings.allow_any_verifier_target
        else frozenset(settings.verifier_targets),
    )
    reasoning = (
        ReasoningParsers(tokenizer_loader(settings.tokenizer_name))
        if settings.reasoning_parsers
        else None
    )
    runtime = Runtime(
        settings=settings,
        engine=engine,
        pipeline=Pipeline(engine, resources, reasoning),
        jobs=JobFactory(settings, engine),
        admission=Admission(
            settings.limits.max_inflight,
            settings.limits.max_queued,
            settings.limits.queue_timeout_s,
        ),
        metrics=metrics,
        recorder=Recorder.from_settings(settings, metrics) if settings.record_dir else None,
        load=LoadAwareK(engine, settings.min_k, settings.load_aware_max_num_seqs, settings.workers)
        if settings.load_aware_k
        else None,
        history=History(settings.ui_history, settings.record_redact) if settings.ui else None,
    )
    recorder = runtime.recorder

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if recorder is not None:
            recorder.start()  # an unwritable record directory fails the start, not a request
        if reasoning is not None:
            # Loads the tokenizer and checks it has each parser's markers, off the loop: a
            # parser that cannot read this model fails the start, not every request.
            for name in settings.reasoning_parsers:
                await asyncio.to_thread(reasoning.check, name)
        # An unknown tool parser fails the start too; importing vLLM's takes seconds.
        await asyncio.to_thread(runtime.jobs.tools.load)
        # Claims the slots' uids, so it belongs to the running server, not to the app object.
        resources.sandbox = SandboxPool(
            settings.sandbox_slots,
            max_queue=settings.sandbox_max_queue,
            queue_timeout_s=settings.sandbox_queue_timeout_s,
            on_outcome=metrics.sandbox_run,
        )
        resources.workers = WorkerPool(
            settings.verifier_workers,
            max_queue=settings.verifier_max_queue,
            limits=WorkerLimits(settings.verifier_timeout_s, settings.verifier_memory_mib << 20),
        )
        # The engine loads in the background so /health can say "loading" meanwhile.
        loading = asyncio.create_task(engine.start())
        loading.add_done_callback(
            functools.partial(_on_engine_started, exit_on_failure=exit_on_engine_failure)
        )
        app.state.runtime = runtime
        app.state.engine_loading = loading
        restore_signals = (
            shutdown.install(runtime, settings.shutdown_grace_s) if drain_on_signal else None
        )
        try:
            yield
        finally:
            if restore_signals is not None:
                restore_signals()
            loading.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await loading
            # Each step runs even when one before it fails: the records must reach the disk
            # and the warm sandboxes must die.
            try:
                await engine.close()
            finally:
                try:
                    await resources.http.aclose()
                finally:
                    try:
                        resources.sandbox.close()
                    finally:
                        try:
                            resources.workers.close()
                        finally:
                            if recorder is not None:
                                # Drains the queue and fsyncs; blocking file work, off the loop.
                                await asyncio.to_thread(recorder.close)

    app = FastAPI(title="bestofk", version="0.1.0", lifespan=lifespan)
    app.state.metrics = metrics
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(BestOfKError, _bestofk_error)
    app.add_exception_handler(EngineError, _engine_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
    app.include_router(native.router)
    app.include_router(openai.router)
    app.include_router(anthropic.router)
    app.include_router(reward.router)
    if settings.ui:
        from bestofk.service.ui.routes import router as ui_router

        app.include_router(ui_router)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.limits.max_body_bytes)
    if settings.api_keys:
        app.add_middleware(ApiKeyMiddleware, keys=settings.api_keys, ui=settings.ui)
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics)
    return app


def app_from_env() -> FastAPI:
    """uvicorn's app factory for ``--workers N``: each worker builds its app from ``BESTOFK_*``.

    Worker processes are spawned, so they cannot be handed a ``Settings`` object; ``bestofk
    serve`` exports its settings as their env twins (:meth:`Settings.as_env`) before starting
    them.
    """
    return create_app(Settings(), exit_on_engine_failure=True, drain_on_signal=True)


def freeze_gc_heap() -> None:
    """Move everything the start allocated (vLLM, torch, the model's tokenizer) out of the
    garbage collector's reach, as vLLM's server does after its start: the collections that
    requests trigger then walk only what requests allocate, not the whole start-up heap."""
    gc.collect()
    gc.freeze()


def _on_engine_started(task: asyncio.Task[None], exit_on_failure: bool) -> None:
    if task.cancelled():
        return
    if task.exception() is None:
        freeze_gc_heap()
        return
    log.error("engine failed to start: %s", task.exception())
    if exit_on_failure:
        os.kill(os.getpid(), signal.SIGTERM)
