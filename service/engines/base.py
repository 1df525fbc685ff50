"""The engine seam. The pipeline depends on this module and nothing else of the engines.

An engine turns one prompt into K sampled completions, handing each on the moment it finishes.
Closing the stream early (early exit, client gone, deadline) must abort the rest in the engine.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol

from bestofk.verifiers.base import Candidate, TokenLogprob

STREAM_INTERVAL = 16
"""Tokens vLLM batches into one delta of a candidate (``SamplingParams.stream_interval``, also
a request field of its OpenAI server); the first and the final delta always go at once. The
pipeline only needs to learn when a candidate finishes: a delta per token made the engine's
output processor build, a backend's API server serialise and this process parse, an output per
token per candidate. It also bounds how far ``usage`` undercounts a candidate aborted by early
exit (tokens generated since its last delta are never reported)."""
BYTES_PER_TOKEN = 64
"""Default of ``limits.max_bytes_per_token``: far above any real vocabulary's average (English
and code run 3-5 bytes a token, CJK under 8), so only a backend that ignores ``max_tokens`` or
sends text no tokenizer made reaches it."""

GREEDY_BELOW = 1e-5
"""vLLM's ``_SAMPLING_EPS``: a temperature below it means greedy decoding."""


@dataclass(frozen=True, slots=True)
class Prompt:
    """Exactly one of a raw ``text`` prompt or chat ``messages``."""

    text: str | None = None
    messages: Sequence[Mapping[str, Any]] | None = None
    chat_template_kwargs: Mapping[str, Any] | None = None
    """Extra variables for the chat template (``enable_thinking``: Qwen3's switch), as vLLM's
    ``chat_template_kwargs``; a chat only."""
    tools: Sequence[Mapping[str, Any]] | None = None
    """Tools (OpenAI's format) the chat template renders with ``messages``, as vLLM passes
    them."""

    def __post_init__(self) -> None:
        if (self.text is None) == (self.messages is None):
            raise ValueError("a prompt is either text or messages, not both or neither")

    @property
    def as_text(self) -> str:
        """The text a verifier should see: the raw prompt, or the last user turn of a chat."""
        if self.text is not None:
            return self.text
        assert self.messages is not None
        for message in reversed(self.messages):
            if message.get("role") == "user":
                return _content_text(message.get("content"))
        return _content_text(self.messages[-1].get("content")) if self.messages else ""


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


@dataclass(frozen=True, slots=True)
class SamplingConfig:
    """Sampling settings shared by all K candidates of a request."""

    temperature: float = 0.8
    top_p: float = 1.0
    top_k: int = 0
    """vLLM's extension: sample from the k likeliest tokens; 0 (or -1) for all."""
    min_p: float = 0.0
    """vLLM's extension: drop tokens less likely than this share of the likeliest one."""
    repetition_penalty: float = 1.0
    """vLLM's extension: above 1 discourages tokens already in the prompt or output."""
    max_tokens: int = 256
    min_tokens: int = 0
    """End-of-sequence is suppressed until this many tokens (vLLM's ``min_tokens``)."""
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: Mapping[int, float] | None = None
    top_logprobs: int | None = None
    """Per-token logprobs for the response: None for none, else this many alternatives."""
    logprobs: bool = True
    """The sampled tokens' logprobs (``mean_logprob``, the tie-break). False, with
    ``top_logprobs`` None, spares the engine computing and sending them."""
    json_schema: Mapping[str, Any] | None = None
    """Constrain decoding to this schema where the engine supports structured outputs."""
    skip_special_tokens: bool = True
    """False keeps special tokens in the text, as vLLM does for tool parsers whose call
    markers (``<tool_call>``) are special tokens."""

    @property
    def greedy(self) -> bool:
        """Whether this is greedy decoding, by vLLM's rule (temperature below 1e-5): every
        sample would be the same, and vLLM refuses more than one."""
        return self.temperature < GREEDY_BELOW

    @property
    def wants_logprobs(self) -> bool:
        """Whether the engine must return logprobs at all."""
        return self.logprobs or self.top_logprobs is not None


def candidate_id(request_id: str, index: int) -> str:
    """The engine request id of candidate ``index`` of request ``request_id``."""
    return f"{request_id}-{index}"


def candidate_sampling(sampling: SamplingConfig, index: int) -> SamplingConfig:
    """Candidate ``index``'s own settings: seeded ``seed + index`` when the request is seeded,
    as vLLM seeds child ``index`` of a seeded ``n=K`` request (so both give the same text)."""
    if sampling.seed is None or index == 0:
        return sampling
    return replace(sampling, seed=sampling.seed + index)


def max_candidate_bytes(sampling: SamplingConfig, bytes_per_token: int) -> int:
    """The most text (and logprob token text) one candidate may bring: ``bytes_per_token`` for
    each of its ``max_tokens`` tokens and for each of their ``top_logprobs`` alternatives. An
    engine ends a candidate that brings more with finish_reason ``length`` (what ``max_tokens``
    means) and drops the rest of it, so a runaway backend cannot fill the memory."""
    return sampling.max_tokens * bytes_per_token * (1 + (sampling.top_logprobs or 0))


HealthStatus = Literal[
    "loading", "ready", "no_healthy_backend", "engine_dead", "restarting", "draining"
]
"""What ``/health`` reports. Engines say all but ``draining``, which is the server's own (after
SIGTERM); ``no_healthy_backend`` is the remote engine's, ``engine_dead`` and ``restarting`` the
in-process one's."""


@dataclass(frozen=True, slots=True)
class EngineHealth:
    """What ``/health`` says, and what a refused request's ``Retry-After`` says."""

    status: HealthStatus
    retry_after_s: float = 0.0
    """When the status can next change (the next health check, an ejection's end)."""
    detail: str = ""

    @property
    def ready(self) -> bool:
        """Whether the engine takes requests now."""
        return self.status == "ready"


@dataclass(slots=True)
class PartialSample:
    """One candidate as its deltas arrive, until it finishes; both engines accumulate here."""

    text: list[str] = field(default_factory=list)
    tokens: int = 0
    size: int = 0
    """What it has brought so far against its cap (``max_candidate_bytes``): bytes of text and
    logprob tokens from a remote backend, characters of text in-process."""
    capped: bool = False
    """It passed a cap and was ended there; what comes of it later is dropped."""
    logprob: float = 0.0
    has_logprobs: bool = False
    """The engine reports the sampled tokens' logprobs (else ``logprob`` means nothing)."""
    logprobs: list[TokenLogprob] = field(default_factory=list)
    reasoning: list[str] | None = None
    """The reasoning deltas a remote backend sent apart from the content (None: it sent none)."""

    def finish(
        self, index: int, finish_reason: str, stop_reason: Any = None, *, cut: bool = False
    ) -> Candidate:
        """The finished candidate; ``stop_reason`` as vLLM reports it (a stop string, a stop
        token id, or None), of which a string is kept; ``cut``: a watch cut it short."""
        return Candidate(
            index=index,
            text="".join(self.text),
            finish_reason=finish_reason,
            tokens=self.tokens,
            # The cumulative logprob is kept as its mean, all the tie-break reads.
            mean_logprob=self.logprob / self.tokens if self.has_logprobs and self.tokens else None,
            logprobs=self.logprobs,
            reasoning=None if self.reasoning is None else "".join(self.reasoning),
            stop_reason=stop_reason if isinstance(stop_reason, str) else None,
            cut=cut,
        )


class CandidateWatch(Protocol):
    """Watches each candidate as its tokens arrive, and may cut it short.

    An engine calls :meth:`delta` with every delta's new tokens (their logprobs, with the top
    alternatives when ``sampling.top_logprobs`` asks for them; none when the request computes
    no logprobs); a True answer aborts that candidate alone in the engine, which hands it on at
    once with what it has so far (this delta included), finished with finish_reason ``abort``
    and ``Candidate.cut`` set. A delta that finishes its candidate is not offered. It must be
    cheap: it runs on the event loop for every delta of every candidate.
    """

    def delta(self, index: int, logprobs: Sequence[TokenLogprob]) -> bool:
        """Whether to cut candidate ``index`` now, given its newest tokens."""
        ...


class SampleStream(Protocol):
    """K candidates in the order they finish, each the verifiers' :class:`Candidate` as
    generated (not yet split into reasoning and answer). ``aclose`` aborts whatever is
    unfinished."""

    prompt_tokens: int
    completion_tokens: int
    """Tokens generated so far over all K, finished or not (aborted work counts too)."""

    def __aiter__(self) -> AsyncIterator[Candidate]: ...

    async def aclose(self) -> None: ...


class Engine(Protocol):
    """A source of K samples per prompt."""

    @property
    def model_name(self) -> str:
        """The name clients use for the served model."""
        ...

    @property
    def health(self) -> EngineHealth:
        """Whether the engine takes requests now, and if not why and until when (cheap: read
        on every request and every ``/health`` probe)."""
        ...

    async def start(self) -> None:
        """Load or connect; returns when ready (or raises)."""
        ...

    async def close(self) -> None:
        """Release processes and connections."""
        ...

    def sample(
        self,
        prompt: Prompt,
        k: int,
        sampling: SamplingConfig,
        request_id: str,
        first_index: int = 0,
        watch: CandidateWatch | None = None,
    ) -> SampleStream:
        """Start generating K candidates for ``prompt``, indexed from ``first_index`` (a later
        wave of the same request goes on where the last one ended): candidate ``i`` is engine
        request ``{request_id}-{i}``, seeded ``sampling.seed + i`` when seeded, so a seeded
        candidate is the same whichever wave, and whatever else the engine runs, samples it.
        The prompt's prefix is shared through the engine's prefix cache."""
        ...
