"""In-process candidates: each its own ``n=1`` request to vLLM's ``AsyncLLM`` (or one
``n=K``), streamed as deltas.

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
import math
from collections.abc import AsyncGenerator, Mapping
from typing import TYPE_CHECKING, Any

from bestofk.service.engines.base import PartialSample, candidate_id, candidate_sampling
from bestofk.service.engines.errors import RequestRejectedError
from bestofk.service.engines.stream import EngineStream
from bestofk.verifiers.base import Candidate, TokenLogprob

if TYPE_CHECKING:
    # Named only in the quoted base below, which ruff does not read (the engine imports this
    # module, so importing it at run time would be a cycle).
    from bestofk.service.engines.vllm_local import VllmEngine  # noqa: F401


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
