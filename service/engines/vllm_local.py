"""In-process vLLM: ``AsyncLLM`` in this process (its engine core in a child process) and its
supervisor; a request's candidates stream through :mod:`bestofk.service.engines.vllm_stream`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import time
from typing import TYPE_CHECKING, Any

from bestofk.service.engines.base import (
    STREAM_INTERVAL,
    CandidateWatch,
    EngineHealth,
    HealthStatus,
    Prompt,
    SamplingConfig,
)
from bestofk.service.engines.errors import (
    EngineFailedError,
    EngineUnavailableError,
    RequestRejectedError,
)
from bestofk.service.engines.vllm_stream import VllmStream

if TYPE_CHECKING:
    from bestofk.service.metrics import Metrics
    from bestofk.service.settings import Settings

log = logging.getLogger(__name__)
LOAD_S = 5.0
"""Retry-After while the engine loads: about when a client may find it ready."""
BACKEND_LABEL = "in-process"
"""The in-process engine's ``backend`` label in ``bestofk_backend_up``."""


SHUTDOWN_TIMEOUT_S = 60.0
"""How long the engine core may take to stop before vLLM kills it. vLLM's default, 5 s, is
less than the CPU build needs on a busy machine: the core and its worker were killed
mid-teardown ("force killing remaining processes"), leaving their shared memory and
semaphores to the resource tracker's warning at exit."""


RESTART_BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
"""Waits before each successive restart attempt of a dead engine; the last one repeats."""
WATCH_INTERVAL_S = 0.5
"""How often the supervisor looks at the engine; a request that meets the death reports it at
once, so this only bounds how long an idle server takes to notice."""


class VllmEngine:
    """vLLM's ``AsyncLLM`` in this process (its engine core runs in a child process).

    A supervisor restarts the engine when its core dies (a crash in a worker, an out-of-memory
    kill, ``kill -9``): the requests it held get 503 with Retry-After, new ones too until the
    new engine is up, and ``status`` says ``engine_dead`` then ``restarting``. It keeps trying
    with backoff; a liveness probe on ``/health`` is the last resort above it.
    """

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.split_candidates = settings.split_candidates is not False
        """Each candidate its own ``n=1`` engine request (cancellable alone, seeded per
        candidate) unless the operator turned it off; a watched stream is always split."""
        self._llm: Any = None
        self._status: HealthStatus = "loading"
        self._dead = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None
        metrics.backend_up(BACKEND_LABEL, False)

    @property
    def model_name(self) -> str:
        """The served name, or the model path/name."""
        return self.settings.model_name or self.settings.model

    @property
    def health(self) -> EngineHealth:
        """``loading``, ``ready``, ``engine_dead`` (noticed, not yet restarting) or
        ``restarting``."""
        status = self._status
        if status == "ready" and (self._llm is None or self._llm.errored):
            status = "engine_dead"
        detail = {
            "loading": "the model is loading",
            "engine_dead": "the vLLM engine core died; it is being restarted",
            "restarting": "the vLLM engine is restarting after its core died",
        }.get(status, "")
        return EngineHealth(status, 0.0 if status == "ready" else LOAD_S, detail)

    @property
    def llm(self) -> Any:
        """The ``AsyncLLM``; raises EngineUnavailableError unless it can take a request."""
        health = self.health
        if not health.ready:
            raise EngineUnavailableError(health.detail, retry_after_s=health.retry_after_s)
        return self._llm

    def translate(self, exc: Exception) -> Exception:
        """The engine error for an exception out of vLLM while serving a request."""
        from vllm.exceptions import VLLMClientError
        from vllm.v1.engine.exceptions import EngineDeadError

        if isinstance(exc, EngineDeadError) or (self._llm is not None and self._llm.errored):
            self._dead.set()
            return EngineUnavailableError(
                "the vLLM engine died while serving this request; it is being restarted, "
                "retry shortly",
                retry_after_s=LOAD_S,
            )
        if isinstance(exc, VLLMClientError | ValueError):
            param = getattr(exc, "parameter", None)
            return RequestRejectedError(f"the engine rejected the request: {exc}", param=param)
        return EngineFailedError(f"the vLLM engine failed: {type(exc).__name__}: {exc}")

    async def start(self) -> None:
        """Load the engine (the server answers /health meanwhile), then supervise it."""
        self._llm = await self._build()
        self._status = "ready"
        self.metrics.backend_up(BACKEND_LABEL, True)
        log.info("vLLM engine ready: %s", self.model_name)
        self._supervisor = asyncio.create_task(self._supervise())

    async def _supervise(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._dead.wait(), WATCH_INTERVAL_S)
            if self.health.ready:
                self._dead.clear()
                continue
            await self._restart()

    async def _restart(self) -> None:
        self._status = "engine_dead"
        self.metrics.backend_up(BACKEND_LABEL, False)
        died = time.monotonic()
        self.metrics.engine_restarted()
        log.error("the vLLM engine died; restarting it (requests meanwhile get 503)")
        dead, self._llm = self._llm, None
        if dead is not None:
            # Kills what is left of the engine core and its workers; may block on their pipes.
            with contextlib.suppress(Exception):
                await asyncio.to_thread(dead.shutdown)
        self._status = "restarting"
        for attempt in itertools.count():
            try:
                self._llm = await self._build()
            except Exception as exc:
                wait = RESTART_BACKOFF_S[min(attempt, len(RESTART_BACKOFF_S) - 1)]
                log.error("restarting the vLLM engine failed (%s); next try in %.0f s", exc, wait)
                await asyncio.sleep(wait)
                continue
            break
        self._dead.clear()
        self._status = "ready"
        self.metrics.backend_up(BACKEND_LABEL, True)
        log.warning("vLLM engine restarted, %.1f s after it died", time.monotonic() - died)

    async def _build(self) -> Any:
        """Build an ``AsyncLLM`` in a worker thread, so the loop keeps answering meanwhile."""
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        v = self.settings.vllm
        if v.enforce_eager:
            # Eager means no compilation, but vLLM still torch.compiles a helper or two (the
            # logprob rank count) with inductor: on CPU that is seconds of g++ in the engine's
            # step loop, again for each new batch shape, stalling every request meanwhile.
            # The engine's processes start below and read this from the environment.
            os.environ.setdefault("TORCH_COMPILE_DISABLE", "1")
        kwargs: dict[str, Any] = {
            "model": self.settings.model,
            "served_model_name": [self.model_name],
            "max_model_len": v.max_model_len,
            "gpu_memory_utilization": v.gpu_memory_utilization,
            "enforce_eager": v.enforce_eager,
            "dtype": v.dtype,
            "seed": v.seed,
            **v.engine_args,
        }
        args = AsyncEngineArgs(**kwargs)
        return await asyncio.to_thread(AsyncLLM.from_engine_args, args)

    async def close(self) -> None:
        """Stop supervising, then shut the engine core down, giving it time to release what it
        holds."""
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        if self._llm is not None:
            llm, self._llm = self._llm, None
            # Joins the engine's processes: blocking, so off the loop.
            await asyncio.to_thread(llm.shutdown, timeout=SHUTDOWN_TIMEOUT_S)

    async def render(self, prompt: Prompt) -> Any:
        """Tokenize (and apply the chat template) through vLLM's own renderer, off the loop."""
        renderer = self.llm.renderer
        try:
            if prompt.messages is not None:
                from vllm.renderers.params import ChatParams

                # As vLLM's server passes tools: to the template, among its arguments.
                kwargs = dict(prompt.chat_template_kwargs or {})
                if prompt.tools:
                    kwargs["tools"] = [dict(t) for t in prompt.tools]
                _, rendered = await renderer.render_chat_async(
                    [list(prompt.messages)], ChatParams(chat_template_kwargs=kwargs)
                )
            else:
                rendered = await renderer.render_cmpl_async([{"prompt": prompt.text}])
        except Exception as exc:
            raise RequestRejectedError(
                f"could not render the prompt: {exc}",
                param="messages" if prompt.messages is not None else "prompt",
            ) from exc
        return rendered[0]

    def sampling_params(self, k: int, sampling: SamplingConfig) -> Any:
        """vLLM ``SamplingParams`` for K children streamed as deltas."""
        from vllm.sampling_params import RequestOutputKind, SamplingParams, StructuredOutputsParams

        structured = (
            StructuredOutputsParams(json=dict(sampling.json_schema))
            if sampling.json_schema is not None
            else None
        )
        return SamplingParams(
            n=k,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k,
            min_p=sampling.min_p,
            repetition_penalty=sampling.repetition_penalty,
            max_tokens=sampling.max_tokens,
            min_tokens=sampling.min_tokens,
            stop=list(sampling.stop) or None,
            seed=sampling.seed,
            presence_penalty=sampling.presence_penalty,
            frequency_penalty=sampling.frequency_penalty,
            logit_bias=dict(sampling.logit_bias) if sampling.logit_bias else None,
            # 0 still returns the sampled token's own logprob, which ranks ties.
            logprobs=(sampling.top_logprobs or 0) if sampling.wants_logprobs else None,
            structured_outputs=structured,
            skip_special_tokens=sampling.skip_special_tokens,
            output_kind=RequestOutputKind.DELTA,
            stream_interval=STREAM_INTERVAL,
        )

    def sample(
        self,
        prompt: Prompt,
        k: int,
        sampling: SamplingConfig,
        request_id: str,
        first_index: int = 0,
        watch: CandidateWatch | None = None,
    ) -> VllmStream:
        """Start K candidates: K requests of ``n=1``, or one of ``n=K`` (``split_candidates``)."""
        return VllmStream(
            self,
            prompt,
            k,
            sampling,
            request_id,
            self.settings.limits.max_bytes_per_token,
            first_index,
            watch,
        )
