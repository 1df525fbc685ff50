"""The shell every engine's :class:`~bestofk.service.engines.base.SampleStream` shares.

Both engines stream K candidates the same way: an async generator of finished candidates behind
``__aiter__``/``aclose`` (closing it is what aborts the unfinished work), token counts for
``usage``, and per-candidate caps that end a runaway candidate with finish_reason ``length``.
What differs is only where the deltas come from (vLLM's ``RequestOutput`` or a backend's SSE
chunks): a subclass implements :meth:`EngineStream._samples` and nothing else of the shell.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Generic, TypeVar

from bestofk.service.engines.base import (
    CandidateWatch,
    PartialSample,
    Prompt,
    SamplingConfig,
    max_candidate_bytes,
)
from bestofk.verifiers.base import Candidate

E = TypeVar("E")


class EngineStream(ABC, Generic[E]):
    """K candidates of one request from engine ``E``, in the order they finish."""

    def __init__(
        self,
        engine: E,
        prompt: Prompt,
        k: int,
        sampling: SamplingConfig,
        request_id: str,
        bytes_per_token: int,
        first_index: int = 0,
        watch: CandidateWatch | None = None,
    ) -> None:
        self.engine = engine
        self.prompt = prompt
        self.k = k
        self.sampling = sampling
        self.request_id = request_id
        self.first_index = first_index
        """The index of the first candidate: candidates are ``first_index`` … ``+ k - 1``."""
        self.watch = watch
        self.prompt_tokens = 0
        self.completion_tokens = 0
        """Tokens generated so far over all K, finished or not (aborted work counts too)."""
        self.max_bytes = max_candidate_bytes(sampling, bytes_per_token)
        """One candidate's cap on what it brings (bytes, or characters in-process)."""
        self._gen = self._samples()

    @abstractmethod
    def _samples(self) -> AsyncGenerator[Candidate, None]:
        """The engine-specific part: generate, and yield each candidate as it finishes."""

    def __aiter__(self) -> AsyncIterator[Candidate]:
        return self._gen

    async def aclose(self) -> None:
        """Close the generator: the engine aborts whatever is unfinished (vLLM when its own
        generator closes, a remote backend when its HTTP stream does)."""
        await self._gen.aclose()

    def extend(self, acc: PartialSample, text: str | None, tokens: int, size: int) -> bool:
        """Add one delta (its text, its new ``tokens``, the ``size`` it brings) to ``acc``.

        A delta that takes the candidate past ``max_tokens`` or its byte cap is not added:
        ``acc`` is capped and this returns False, and the caller finishes it with ``length``
        (what ``max_tokens`` means) and drops what comes of it later.
        """
        if acc.tokens + tokens > self.sampling.max_tokens or acc.size + size > self.max_bytes:
            acc.capped = True
            return False
        if text:
            acc.text.append(text)
        acc.size += size
        acc.tokens += tokens
        return True
