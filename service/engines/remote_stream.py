"""The K candidates of one request from a remote backend, streamed as its SSE deltas arrive.

All K candidates of a request go to one backend (and every wave of an adaptive request to the
same one), so the backend's prefix cache shares the prompt. By default they go in one streamed
``n=K`` call (seeded ``seed + first index``: vLLM seeds child j ``seed + j``, so candidate i
gets ``seed + i``); a backend that refuses ``n`` gets K concurrent ``n=1`` calls instead
(remembered per backend). With ``split_candidates``, or a watch that may cut one candidate
alone, each candidate is its own ``n=1`` call (request id ``{id}-{i}``, seeded ``seed + i``),
cut by closing its stream. Which backend takes a request, and which are out of rotation
(health checks, outlier ejection), is :mod:`bestofk.service.engines.backends`. A request that
fails on one before any of its candidates was handed on is retried once on another.

What one call sends and how its answers read is :mod:`bestofk.service.engines.remote_call`;
the engine that starts these streams is :mod:`bestofk.service.engines.openai_remote`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING, Any

from bestofk.service.engines.backends import Backend
from bestofk.service.engines.base import PartialSample, candidate_id, candidate_sampling
from bestofk.service.engines.errors import EngineFailedError, EngineTimeoutError
from bestofk.service.engines.remote_call import (
    CONNECT_TIMEOUT_S,
    READ_TIMEOUT_S,
    NRefusedError,
    add_logprobs,
    drain,
    refusal,
    sampling_body,
)
from bestofk.service.engines.stream import EngineStream
from bestofk.verifiers.base import Candidate
from bestofk.verifiers.openai_http import (
    ErrorReply,
    ProtocolError,
    ReadTimeout,
    TransportError,
    logprob_entries,
    parse_chunk,
    read_error,
    sse_lines,
    stream,
)

if TYPE_CHECKING:
    # Named only in the quoted base below, which ruff does not read (the engine imports this
    # module, so importing it at run time would be a cycle).
    from bestofk.service.engines.openai_remote import OpenAIEngine  # noqa: F401

log = logging.getLogger(__name__)


class RemoteStream(EngineStream["OpenAIEngine"]):
    """K candidates from one backend, in the order they finish."""

    async def _samples(self) -> AsyncGenerator[Candidate, None]:
        pool = self.engine.pool
        backend = pool.pick(self.request_id, continuing=self.first_index > 0)
        first_token_s = pool.first_token_timeout(backend)
        handed_on = False
        # Each nested stream is closed as its consumer stops (aclosing), not whenever the
        # garbage collector gets to it: closing is what aborts the work at the backend.
        try:
            async with contextlib.aclosing(self._attempt(backend, first_token_s)) as samples:
                async for sample in samples:
                    handed_on = True
                    yield sample
            return
        except EngineFailedError as exc:
            # Nothing of this request has left the engine yet: another backend can take it
            # whole, and the client never learns of the failure.
            retry = None if handed_on else pool.alternative(backend)
            if retry is None:
                raise
            log.warning("request %s: %s; retrying on %s", self.request_id, exc.message, retry.label)
            pool.remember(self.request_id, retry)
        async with contextlib.aclosing(self._attempt(retry, None)) as samples:
            async for sample in samples:
                yield sample

    async def _attempt(
        self, backend: Backend, first_token_s: float | None
    ) -> AsyncGenerator[Candidate, None]:
        k = self.k
        engine = self.engine
        # One call of n=K where the operator chose it, the backend takes it, and nothing must
        # be cut alone; else a call per candidate.
        joint = not engine.settings.split_candidates and self.watch is None
        backend.in_flight += 1
        try:
            if joint and backend.supports_n is not False and k > 1:
                try:
                    async with contextlib.aclosing(
                        self._call(backend, k, self.first_index, first_token_s)
                    ) as samples:
                        async for sample in samples:
                            yield sample
                    backend.supports_n = True
                    return
                except NRefusedError:
                    log.warning("backend %s refuses n>1; using %d calls of n=1", backend.label, k)
                    backend.supports_n = False
            if k == 1:  # a single call: no fan-out, no task of its own
                async with contextlib.aclosing(
                    self._call(backend, 1, self.first_index, first_token_s)
                ) as samples:
                    async for sample in samples:
                        yield sample
                return
            async with contextlib.aclosing(self._fan_out(backend, first_token_s)) as samples:
                async for sample in samples:
                    yield sample
        finally:
            backend.in_flight -= 1

    async def _fan_out(
        self, backend: Backend, first_token_s: float | None
    ) -> AsyncGenerator[Candidate, None]:
        k = self.k
        queue: asyncio.Queue[Candidate | BaseException] = asyncio.Queue()

        async def one(index: int) -> None:
            try:
                async with contextlib.aclosing(
                    self._call(backend, 1, index, first_token_s)
                ) as samples:
                    async for sample in samples:
                        await queue.put(sample)
            except BaseException as exc:
                await queue.put(exc)
                raise

        tasks = [asyncio.create_task(one(self.first_index + i)) for i in range(k)]
        try:
            for _ in range(k):
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _call(
        self, backend: Backend, n: int, index_offset: int, first_token_s: float | None
    ) -> AsyncGenerator[Candidate, None]:
        """One streamed call of candidates ``index_offset`` … ``+ n - 1``; ``first_token_s``:
        give up on the backend (``_NoFirstTokenError``) if no token has come by then."""
        engine = self.engine
        pool = engine.pool
        chat = self.prompt.messages is not None
        # vLLM seeds child j of a seeded n=K call seed + j: seeded from seed + index_offset,
        # every candidate gets seed + its index, however the calls are cut.
        path, body = sampling_body(
            engine.model_for(backend),
            self.prompt,
            n,
            candidate_sampling(self.sampling, index_offset),
            backend.vllm,
        )
        if backend.vllm and n == 1:
            body["request_id"] = candidate_id(self.request_id, index_offset)
        choices: dict[int, PartialSample] = {}
        finished = 0
        started = False
        sent = time.monotonic()
        first: float | None = None
        try:
            async with asyncio.timeout(first_token_s) as waiting:
                async with stream(
                    engine.http,
                    backend.url + path,
                    body,
                    engine.headers,
                    connect_s=CONNECT_TIMEOUT_S,
                    read_s=READ_TIMEOUT_S,
                ) as response:
                    started = True
                    if response.status >= 400:
                        raise refusal(await read_error(response), n)
                    # A line is at most one delta of each candidate; the JSON around them and
                    # their escapes take a few times the text (8x is ample).
                    line_cap = 8 * n * self.max_bytes + 65_536
                    async with contextlib.aclosing(sse_lines(response, line_cap)) as lines:
                        async for line in lines:
                            if not line.startswith("data:"):
                                continue
                            if first is None:
                                first = time.monotonic() - sent
                                waiting.reschedule(None)  # before the first yield
                                pool.first_token(backend, first)
                            data = line[5:].strip()
                            if data == "[DONE]":
                                await drain(lines)
                                break
                            cut = False
                            for sample in self._consume_checked(
                                data, choices, chat, n, backend, index_offset
                            ):
                                finished += 1
                                cut = cut or sample.cut
                                yield sample
                            if cut and n == 1:
                                # The watch cut its candidate: closing the stream, undrained,
                                # aborts it at the backend.
                                break
                            if finished == n and any(c.capped for c in choices.values()):
                                # It ignored max_tokens: closing the stream, undrained, stops
                                # it; reading on would take whatever it keeps sending.
                                break
        except TimeoutError:
            if first is not None or first_token_s is None:
                raise
            raise pool.failed(
                backend,
                _NoFirstTokenError(
                    f"backend {backend.label} sent no token within {first_token_s:.3g} s"
                ),
            ) from None
        except ReadTimeout as exc:
            raise pool.failed(
                backend, EngineTimeoutError(f"backend {backend.label} timed out: {exc}")
            ) from exc
        except TransportError as exc:
            # Out until a health check passes again.
            what = "broke mid-stream" if started else "is unreachable"
            raise pool.failed(
                backend, EngineFailedError(f"backend {backend.label} {what}: {exc}"), down=True
            ) from exc
        except ProtocolError as exc:
            # It does not speak the protocol: out until a health check passes again.
            raise pool.failed(backend, _ProtocolError(str(exc)), down=True) from None
        except _ProtocolError as exc:
            raise pool.failed(backend, exc, down=True) from None
        except EngineFailedError as exc:
            raise pool.failed(backend, exc) from None
        except (GeneratorExit, asyncio.CancelledError):
            if finished:  # closed by early exit or the deadline after candidates came: it works
                pool.succeeded(backend)
            raise
        if finished < n:
            # Without this a stream that ends early would leave nothing to choose from.
            raise pool.failed(
                backend,
                EngineFailedError(
                    f"backend {backend.label} ended the stream with {finished} of {n} "
                    "candidates done"
                ),
            )
        pool.succeeded(backend)

    def _consume_checked(
        self,
        data: str,
        choices: dict[int, PartialSample],
        chat: bool,
        n: int,
        backend: Backend,
        offset: int,
    ) -> list[Candidate]:
        """The candidates a stream line finishes (or the watch cuts); a protocol error for a
        line we cannot read."""
        try:
            samples = self._consume(parse_chunk(data), choices, chat, backend, offset)
            if any(not offset <= s.index < offset + n for s in samples):
                raise ValueError(f"choice index out of range for n={n}")
        except ErrorReply as reply:
            raise refusal(reply, None) from None
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise _ProtocolError(
                f"backend {backend.label} sent a malformed stream chunk "
                f"({type(exc).__name__}: {exc}): {data[:200]!r}"
            ) from None
        return samples

    def _consume(
        self,
        chunk: dict[str, Any],
        choices: dict[int, PartialSample],
        chat: bool,
        backend: Backend,
        offset: int,
    ) -> list[Candidate]:
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.prompt_tokens = int(usage.get("prompt_tokens") or self.prompt_tokens)
        finished: list[Candidate] = []
        for raw in chunk.get("choices") or ():
            index = int(raw.get("index", 0))
            acc = choices.setdefault(index, PartialSample())
            if acc.capped:
                continue
            delta = (raw.get("delta") or {}) if chat else {}
            text = delta.get("content") if chat else raw.get("text")
            # vLLM's parsers send the thinking apart: ``reasoning`` (``reasoning_content``
            # before vLLM 0.11, and on other servers).
            thought = delta.get("reasoning") or delta.get("reasoning_content")
            entries = logprob_entries(raw.get("logprobs"), chat)
            new_tokens = len(entries)
            if not new_tokens and isinstance(ids := raw.get("token_ids"), list):
                # No logprobs asked for: vLLM's token ids (``return_token_ids``) count instead.
                new_tokens = len(ids)
            self.completion_tokens += new_tokens
            size = len(text.encode()) if isinstance(text, str) else 0
            size += sum(len(t) + sum(len(a) for a, _ in top) for t, _, top in entries)
            if isinstance(thought, str):
                size += len(thought.encode())
            if not self.extend(acc, text, new_tokens, size):
                log.warning(
                    "backend %s ignores max_tokens: candidate %d passed %d tokens or %d bytes; "
                    "ended there with finish_reason length",
                    backend.label, index, self.sampling.max_tokens, self.max_bytes,
                )  # fmt: skip
                finished.append(acc.finish(index + offset, "length"))
                continue
            add_logprobs(acc, entries)
            if isinstance(thought, str):
                backend.splits_reasoning = True
                if acc.reasoning is None:
                    acc.reasoning = []
                acc.reasoning.append(thought)
            if raw.get("finish_reason") is not None:
                if chat and acc.reasoning is None and backend.splits_reasoning:
                    acc.reasoning = []  # split by the backend, with nothing thought
                finished.append(
                    acc.finish(index + offset, raw["finish_reason"], raw.get("stop_reason"))
                )
            elif self.watch is not None and self.watch.delta(
                index + offset, acc.logprobs[len(acc.logprobs) - len(entries) :]
            ):
                acc.capped = True  # what comes of it later is dropped
                finished.append(acc.finish(index + offset, "abort", cut=True))
        return finished


class _ProtocolError(EngineFailedError):
    """The backend's stream is not the protocol (a malformed chunk, an endless line)."""


class _NoFirstTokenError(EngineFailedError):
    """No token came from the backend within the request's first-token timeout."""
