"""In-process vLLM: one ``n=K`` request per prompt, streamed as deltas.

With ``RequestOutputKind.DELTA`` every child of an ``n=K`` request reports its new tokens (every
``STREAM_INTERVAL`` steps) and gets a ``finish_reason`` the moment it ends, so each candidate is
handed on as soon as it finishes while the others keep decoding. Closing the stream closes
vLLM's generator, which aborts the unfinished children in the engine.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from service.engines.base import STREAM_INTERVAL, Prompt, Sample, SamplingConfig, TokenLogprob
from service.errors import BackendError, EngineNotReadyError, InvalidRequestError

log = logging.getLogger(__name__)


SHUTDOWN_TIMEOUT_S = 60.0
"""How long the engine core may take to stop before vLLM kills it. vLLM's default, 5 s, is
less than the CPU build needs on a busy machine: the core and its worker were killed
mid-teardown ("force killing remaining processes"), leaving their shared memory and
semaphores to the resource tracker's warning at exit."""


@dataclass(frozen=True, slots=True)
class VllmOptions:
    """How to build the in-process engine (a subset of vLLM's engine args, plus a passthrough)."""

    model: str
    served_model_name: str | None = None
    max_model_len: int | None = None
    gpu_memory_utilization: float = 0.9
    enforce_eager: bool = False
    dtype: str = "auto"
    seed: int = 0
    extra: Mapping[str, Any] = field(default_factory=dict)
    """Any other ``AsyncEngineArgs`` field, passed through unchanged."""


@dataclass(slots=True)
class _Partial:
    text: list[str] = field(default_factory=list)
    tokens: int = 0
    logprob: float = 0.0
    logprobs: list[TokenLogprob] = field(default_factory=list)


class VllmStream:
    """The K candidates of one request, in the order they finish."""

    def __init__(
        self,
        engine: VllmEngine,
        prompt: Prompt,
        k: int,
        sampling: SamplingConfig,
        request_id: str,
    ) -> None:
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self._gen = self._run(engine, prompt, k, sampling, request_id)

    def __aiter__(self) -> AsyncIterator[Sample]:
        return self._gen

    async def aclose(self) -> None:
        """Stop consuming; vLLM aborts the unfinished children when its generator closes."""
        await self._gen.aclose()

    async def _run(
        self,
        engine: VllmEngine,
        prompt: Prompt,
        k: int,
        sampling: SamplingConfig,
        request_id: str,
    ) -> AsyncGenerator[Sample, None]:
        llm = engine.llm
        limit = llm.model_config.max_model_len
        if sampling.max_tokens > limit:
            # As vLLM's OpenAI server refuses it, so both engines answer alike (vLLM itself
            # would quietly stop each candidate at the context length).
            raise InvalidRequestError(
                f"max_tokens={sampling.max_tokens} cannot be greater than the model's "
                f"max_model_len={limit}",
                param="max_tokens",
            )
        engine_input = await engine.render(prompt)
        try:
            # vLLM validates here and again in generate (against the model: vocabulary,
            # context length): a value it refuses is the client's error, never a 500.
            params = engine.sampling_params(k, sampling)
        except Exception as exc:
            raise _translate(exc) from exc
        partial: dict[int, _Partial] = {}
        per_token = sampling.top_logprobs is not None  # the response lists every token
        outputs = llm.generate(engine_input, params, request_id)
        try:
            async for out in outputs:
                self.prompt_tokens = len(out.prompt_token_ids or ())
                for child in out.outputs:
                    acc = partial.setdefault(child.index, _Partial())
                    acc.text.append(child.text)
                    n_new = len(child.token_ids)
                    acc.tokens += n_new
                    self.completion_tokens += n_new
                    for token_id, position in zip(
                        child.token_ids, child.logprobs or (), strict=False
                    ):
                        chosen = position.get(token_id)
                        if chosen is None:
                            continue
                        acc.logprob += chosen.logprob
                        if per_token:
                            acc.logprobs.append(_token_logprob(token_id, chosen, position))
                    if child.finish_reason is not None:
                        yield Sample(
                            index=child.index,
                            text="".join(acc.text),
                            finish_reason=child.finish_reason,
                            tokens=acc.tokens,
                            cumulative_logprob=acc.logprob if sampling.wants_logprobs else None,
                            logprobs=acc.logprobs,
                        )
        except Exception as exc:
            raise _translate(exc) from exc
        finally:
            await outputs.aclose()


def _token_logprob(token_id: int, chosen: Any, position: Mapping[int, Any]) -> TokenLogprob:
    top = sorted(
        ((lp.decoded_token or "", lp.logprob) for tid, lp in position.items() if tid != token_id),
        key=lambda item: -item[1],
    )
    logprob = chosen.logprob if math.isfinite(chosen.logprob) else -9999.0
    return TokenLogprob(chosen.decoded_token or "", logprob, tuple(top))


def _translate(exc: Exception) -> Exception:
    from vllm.exceptions import VLLMClientError

    if isinstance(exc, VLLMClientError | ValueError):
        param = getattr(exc, "parameter", None)
        return InvalidRequestError(f"the engine rejected the request: {exc}", param=param)
    return BackendError(f"the vLLM engine failed: {type(exc).__name__}: {exc}")


class VllmEngine:
    """vLLM's ``AsyncLLM`` in this process (its engine core runs in a child process)."""

    def __init__(self, options: VllmOptions) -> None:
        self.options = options
        self._llm: Any = None
        self._loading: asyncio.Task[None] | None = None

    @property
    def model_name(self) -> str:
        """The served name, or the model path/name."""
        return self.options.served_model_name or self.options.model

    @property
    def ready(self) -> bool:
        """True once the engine has loaded and is still alive."""
        return self._llm is not None and not self._llm.errored

    @property
    def llm(self) -> Any:
        """The ``AsyncLLM``; raises EngineNotReadyError while it is loading."""
        if self._llm is None:
            raise EngineNotReadyError("the model is still loading", retry_after_s=5)
        return self._llm

    async def start(self) -> None:
        """Build the engine in a worker thread so the server answers /health while it loads."""
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        opts = self.options
        if opts.enforce_eager:
            # Eager means no compilation, but vLLM still torch.compiles a helper or two (the
            # logprob rank count) with inductor: on CPU that is seconds of g++ in the engine's
            # step loop, again for each new batch shape, stalling every request meanwhile.
            # The engine's processes start below and read this from the environment.
            os.environ.setdefault("TORCH_COMPILE_DISABLE", "1")
        kwargs: dict[str, Any] = {
            "model": opts.model,
            "served_model_name": [self.model_name],
            "max_model_len": opts.max_model_len,
            "gpu_memory_utilization": opts.gpu_memory_utilization,
            "enforce_eager": opts.enforce_eager,
            "dtype": opts.dtype,
            "seed": opts.seed,
            **opts.extra,
        }
        args = AsyncEngineArgs(**kwargs)
        self._llm = await asyncio.to_thread(AsyncLLM.from_engine_args, args)
        log.info("vLLM engine ready: %s", self.model_name)

    async def close(self) -> None:
        """Shut the engine core process down, giving it time to release what it holds."""
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

                _, rendered = await renderer.render_chat_async(
                    [list(prompt.messages)], ChatParams()
                )
            else:
                rendered = await renderer.render_cmpl_async([{"prompt": prompt.text}])
        except Exception as exc:
            raise InvalidRequestError(
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
            output_kind=RequestOutputKind.DELTA,
            stream_interval=STREAM_INTERVAL,
        )

    def sample(
        self, prompt: Prompt, k: int, sampling: SamplingConfig, request_id: str
    ) -> VllmStream:
        """Start one ``n=k`` request."""
        return VllmStream(self, prompt, k, sampling, request_id)
