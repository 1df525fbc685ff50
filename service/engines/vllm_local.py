"""In-process vLLM: each candidate its own ``n=1`` request (or one ``n=K``), streamed as deltas.

With ``RequestOutputKind.DELTA`` every candidate reports its new tokens (every
``STREAM_INTERVAL`` steps) and gets a ``finish_reason`` the moment it ends, so each one is
handed on as soon as it finishes while the others keep decoding. K requests of ``n=1`` cost
what one ``n=K`` costs (vLLM fans ``n`` out into child requests anyway, and the prompt's prefix
is shared through its prefix cache), but each can be aborted alone (a child of ``n=K`` cannot:
its id carries a random suffix) and each is seeded as candidate ``i`` whoever else runs.
Closing the stream aborts every unfinished one in the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import os
import time
from collections.abc import AsyncGenerator, Mapping
from typing import TYPE_CHECKING, Any

from bestofk.service.engines.base import (
    STREAM_INTERVAL,
    CandidateWatch,
    EngineHealth,
    HealthStatus,
    PartialSample,
    Prompt,
    SamplingConfig,
    candidate_id,
    candidate_sampling,
)
from bestofk.service.engines.errors import (
    EngineFailedError,
    EngineUnavailableError,
    RequestRejectedError,
)
from bestofk.service.engines.stream import EngineStream
from bestofk.verifiers.base import Candidate, TokenLogprob

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


class VllmStream(EngineStream["VllmEngine"]):
    """The K candidates of one request, in the order they finish."""

    async def _samples(self) -> AsyncGenerator[Candidate, None]:
        engine, sampling = self.engine, self.sampling
        llm = engine.llm
        limit = llm.model_config.max_model_len
        if sampling.max_tokens > limit:
            # As vLLM's OpenAI server refuses it, so both engines answer alike (vLLM itself
            # would quietly stop each candidate at the context length).
            raise RequestRejectedError(
                f"max_tokens={sampling.max_tokens} cannot be greater than the model's "
                f"max_model_len={limit}",
                param="max_tokens",
            )
        engine_input = await engine.render(self.prompt)
        split = engine.split_candidates or self.watch is not None
        try:
            # vLLM validates here and again in generate (against the model: vocabulary,
            # context length): a value it refuses is the client's error, never a 500.
            # vLLM seeds child j of an n=K request seed + j: from seed + first_index, child j
            # is candidate first_index + j, seeded as a request of its own would be.
            params = (
                [
                    engine.sampling_params(1, candidate_sampling(sampling, self.first_index + j))
                    for j in range(self.k)
                ]
                if split
                else [
                    engine.sampling_params(self.k, candidate_sampling(sampling, self.first_index))
                ]
            )
        except Exception as exc:
            raise engine.translate(exc) from exc
        samples = (
            self._split(engine_input, params) if split else self._joint(engine_input, params[0])
        )
        async with contextlib.aclosing(samples) as finished:
            async for sample in finished:
                yield sample

    async def _joint(self, engine_input: Any, params: Any) -> AsyncGenerator[Candidate, None]:
        """One ``n=K`` request: vLLM fans it out into K children; closing aborts them all."""
        partial: dict[int, PartialSample] = {}
        outputs = self.engine.llm.generate(engine_input, params, self.request_id)
        try:
            async for out in outputs:
                self.prompt_tokens = len(out.prompt_token_ids or ())
                for child in out.outputs:
                    sample = self._delta(partial, self.first_index + child.index, child)
                    if sample is not None:
                        yield sample
        except Exception as exc:
            raise self.engine.translate(exc) from exc
        finally:
            await outputs.aclose()

    async def _split(self, engine_input: Any, params: list[Any]) -> AsyncGenerator[Candidate, None]:
        """K requests of ``n=1`` (ids ``{request_id}-{index}``), merged as their deltas come;
        each one ends (is aborted in the engine, if unfinished) once its candidate is handed
        on, and closing aborts every one still running."""
        llm = self.engine.llm
        queue: asyncio.Queue[tuple[int, Any] | Exception] = asyncio.Queue()

        async def one(index: int, candidate_params: Any) -> None:
            # Cancelling this task aborts the request in the engine (vLLM's generate does
            # on CancelledError).
            outputs = llm.generate(
                engine_input, candidate_params, candidate_id(self.request_id, index)
            )
            try:
                async for out in outputs:
                    queue.put_nowait((index, out))
            except Exception as exc:
                queue.put_nowait(exc)
            finally:
                await outputs.aclose()

        tasks = {
            self.first_index + j: asyncio.create_task(one(self.first_index + j, p))
            for j, p in enumerate(params)
        }
        partial: dict[int, PartialSample] = {}
        try:
            done = 0
            while done < len(tasks):
                item = await queue.get()
                if isinstance(item, Exception):
                    raise self.engine.translate(item) from item
                index, out = item
                self.prompt_tokens = len(out.prompt_token_ids or ())
                for child in out.outputs:
                    sample = self._delta(partial, index, child)
                    if sample is not None:
                        done += 1
                        if child.finish_reason is None:
                            tasks[index].cancel()  # capped or cut: stop it in the engine
                        yield sample
        finally:
            for task in tasks.values():
                task.cancel()
            await asyncio.gather(*tasks.values(), return_exceptions=True)

    def _delta(self, partial: dict[int, PartialSample], index: int, child: Any) -> Candidate | None:
        """Add one child's delta to candidate ``index``; the candidate if this finishes it
        (done, capped or cut by the watch), else None. Deltas after that are dropped."""
        sampling, watch = self.sampling, self.watch
        acc = partial.get(index)
        if acc is None:
            acc = partial[index] = PartialSample(has_logprobs=sampling.wants_logprobs)
        n_new = len(child.token_ids)
        self.completion_tokens += n_new
        if acc.capped:
            return None
        # vLLM stops at max_tokens itself; text is capped too, as for remote backends (a
        # vocabulary of huge tokens), counted in characters: one addition per delta.
        if not self.extend(acc, child.text, n_new, len(child.text)):
            return acc.finish(index, "length")
        per_token = sampling.top_logprobs is not None  # the response lists every token
        new: list[TokenLogprob] = []
        for token_id, position in zip(child.token_ids, child.logprobs or (), strict=False):
            chosen = position.get(token_id)
            if chosen is None:
                continue
            acc.logprob += chosen.logprob
            if per_token or watch is not None:
                new.append(_token_logprob(token_id, chosen, position))
        if per_token:
            acc.logprobs.extend(new)
        if child.finish_reason is not None:
            return acc.finish(index, child.finish_reason, child.stop_reason)
        if watch is not None and watch.delta(index, new):
            acc.capped = True
            return acc.finish(index, "abort", cut=True)
        return None


def _token_logprob(token_id: int, chosen: Any, position: Mapping[int, Any]) -> TokenLogprob:
    top = sorted(
        ((lp.decoded_token or "", lp.logprob) for tid, lp in position.items() if tid != token_id),
        key=lambda item: -item[1],
    )
    logprob = chosen.logprob if math.isfinite(chosen.logprob) else -9999.0
    return TokenLogprob(chosen.decoded_token or "", logprob, tuple(top))


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
