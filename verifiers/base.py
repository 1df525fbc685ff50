"""The verifier seam: what a verifier receives, what it returns, and the protocols it implements.

A verifier is built once per request from a validated spec (a pydantic model, since specs come
from HTTP bodies and config files) and then called with plain dataclasses. Pointwise verifiers
score one candidate at a time, as soon as it finishes; set-level verifiers score all K together
once every candidate is in.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol, TypeVar, runtime_checkable

import anyio.to_thread
from pydantic import BaseModel, ConfigDict, Field

from bestofk.verifiers.openai_http import PooledClient

if TYPE_CHECKING:
    from bestofk.verifiers.sandbox.pool import SandboxPool
    from bestofk.verifiers.workers import WorkerPool

T = TypeVar("T")


VerifierInput = Literal["answer", "reasoning", "full"]
"""What of a candidate a verifier judges (its spec's ``input``)."""


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """One generated token with its logprob and, if asked, the top alternatives."""

    token: str
    logprob: float
    top: Sequence[tuple[str, float]] = ()


@dataclass(frozen=True, slots=True)
class Candidate:
    """One completion to be judged, as the engine (or a /verify client) produced it.

    With a reasoning parser, ``text`` is the answer and ``reasoning`` the thinking before it;
    ``output`` keeps the whole completion. Without one, ``text`` is the whole completion.

    The engine hands it on as it finished: ``text`` as generated, or the answer alone with the
    thinking in ``reasoning`` when a remote backend's reasoning parser sent them apart (and
    ``output`` None either way); the pipeline then splits it (``reasoning``, ``output``,
    ``answered``) and reads its tool calls (``calls``).
    """

    index: int
    text: str
    finish_reason: str | None = None
    tokens: int = 0
    mean_logprob: float | None = None
    """Mean token logprob, the tie-breaker between equally scored candidates; None when the
    engine computed no logprobs (or it has no tokens)."""
    logprobs: Sequence[TokenLogprob] = ()
    """Per-token logprobs, when the request asked for them (the response's, confidence's)."""
    reasoning: str | None = None
    """The thinking, split off by the reasoning parser (or sent apart by the backend's); None
    without one (or no thinking)."""
    output: str | None = None
    """The whole completion as generated, when a reasoning parser split it (else ``text``)."""
    answered: bool = True
    """False when the thinking never ended: there is no answer (``text`` is empty)."""
    reasoning_tokens: int = 0
    """Generated tokens spent before the answer (the thinking and its markers)."""

    stop_reason: str | None = None
    """The stop string that ended it, if one did."""
    calls: ParsedCalls | None = None
    """Its tool calls, when the request offered tools and a tool parser read the text."""
    cut: bool = False
    """A watch cut it short (confidence-aware stopping; finish_reason ``abort``): its text is
    partial, and it is never verified nor chosen while another is in."""

    @property
    def truncated(self) -> bool:
        """The thinking was cut by ``max_tokens`` before it ended: no answer."""
        return not self.answered and self.finish_reason == "length"

    @property
    def no_answer(self) -> str:
        """Why there is no answer, for the verdicts of answer verifiers."""
        if self.truncated:
            return (
                "no answer: the thinking was cut by max_tokens (finish_reason length) before "
                "it ended; raise max_tokens"
            )
        return "no answer: nothing follows the thinking, or it never ended"

    def view(self, part: VerifierInput) -> Candidate:
        """This candidate as a verifier of ``input`` ``part`` sees it: ``text`` is the answer,
        the reasoning, or the whole output."""
        if part == "answer" or self.output is None:
            return self
        text = self.output if part == "full" else self.reasoning or ""
        return replace(self, text=text)


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One function call, as a tool parser read it from a candidate's text."""

    id: str
    name: str
    arguments: str
    """The arguments as JSON text (OpenAI's ``function.arguments``)."""


@dataclass(frozen=True, slots=True)
class ParsedCalls:
    """What a tool parser made of a candidate's text."""

    content: str | None
    """The text outside the calls (None when there is none)."""
    calls: tuple[ToolCall, ...] = ()
    unparsed: bool = False
    """The text opens a tool call the parser could not read (bad JSON, missing fields)."""


@dataclass(frozen=True, slots=True)
class RequestContext:
    """What a verifier may know about the request besides the candidate itself."""

    prompt: str
    """The prompt as the model saw it (a chat is rendered to its last user turn)."""
    messages: Sequence[Mapping[str, Any]] | None = None
    request_id: str = ""


@dataclass(slots=True)
class Verdict:
    """One verifier's judgement of one candidate. ``score`` is in [0, 1]."""

    verifier: str
    score: float
    passed: bool
    detail: str = ""
    latency_ms: float = 0.0
    error: str | None = None
    tokens: int = 0
    """Tokens the verifier itself generated (an LLM judge); counted in usage.verifier_tokens."""

    @classmethod
    def failure(cls, verifier: str, error: str, latency_ms: float = 0.0) -> Verdict:
        """The verdict of a verifier that could not reach a judgement: score 0, error set."""
        return cls(verifier, 0.0, False, detail=error, latency_ms=latency_ms, error=error)


class VerifierSpec(BaseModel):
    """Fields every verifier spec carries. Each verifier type extends it with its own."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str
    weight: float = Field(default=1.0, ge=0.0, le=1000.0)
    required: bool = False
    input: VerifierInput = "answer"
    """What the verifier judges when a reasoning parser split the output: the ``answer``
    (default; a candidate without one fails without being checked), the ``reasoning``, or the
    ``full`` output as generated. Without a parser all three are the whole output."""


@dataclass(frozen=True, slots=True)
class Completion:
    """One greedy completion from a judge model, with the top logprobs of each position."""

    text: str
    tokens: int
    """Tokens generated (counted in usage.verifier_tokens)."""
    top_logprobs: Sequence[Mapping[str, float]] = ()
    """Per generated position: token text → logprob, the chosen token and its alternatives."""


class Completer(Protocol):
    """A model that completes raw text prompts: the serving engine, or a remote endpoint.

    One call is one batch: every prompt goes out together so the model batches them.
    """

    async def complete(
        self, prompts: Sequence[str], max_tokens: int, top_logprobs: int, request_id: str
    ) -> list[Completion]:
        """Greedy completions of ``prompts``, in order; raises on failure."""
        ...


@dataclass(slots=True)
class VerifierResources:
    """Shared, long-lived things a verifier may use; built once by the app."""

    sandbox: SandboxPool | None = None
    workers: WorkerPool | None = None
    """Processes for CPU-bound checks (:func:`run_bounded`); None: a default pool."""
    completer: Completer | None = None
    """The serving engine as a judge model (``judge`` without an ``endpoint``)."""
    allowed_models: frozenset[str] | None = None
    """Model paths and endpoint URLs a spec may name (``judge.endpoint``, ``reward_model``);
    None allows any, which suits trusted clients only: a spec could otherwise make the server
    load a local model or call an internal URL."""
    http: PooledClient = field(default_factory=PooledClient)
    """The one HTTP client of the model endpoints (``judge.endpoint``, ``reward_model``)."""
    """Room for engine handles (judge, reward model) without a circular import."""


@runtime_checkable
class Verifier(Protocol):
    """Scores one candidate. Must not raise for a bad candidate: return a failing verdict."""

    Spec: ClassVar[type[VerifierSpec]]
    spec: VerifierSpec

    async def verify(self, ctx: RequestContext, candidate: Candidate) -> Verdict: ...


@runtime_checkable
class SetVerifier(Protocol):
    """Scores all candidates of a request together (self-consistency, listwise judge)."""

    Spec: ClassVar[type[VerifierSpec]]
    spec: VerifierSpec

    async def verify_all(
        self, ctx: RequestContext, candidates: Sequence[Candidate]
    ) -> list[Verdict]: ...


VerifierFactory = Callable[[VerifierSpec, VerifierResources], "Verifier | SetVerifier"]


class VerifierCapacityError(Exception):
    """A shared verifier resource (the sandbox pool) stayed full: the request, not the
    candidate, should fail, with a hint when to retry. The only exception the pipeline lets out
    of a check."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


INLINE_BUDGET_S = 0.0005
"""The most a check tried inline may hold the event loop before it moves to a worker."""
INLINE_MAX_CHARS = 1024
"""Inputs up to this size are small enough to be checked inline when the work is linear."""


class NotCheap(Exception):
    """Raised by a check tried inline (``inline=True``) as soon as it cannot show it will be
    quick: an input too large, a regex past :data:`INLINE_BUDGET_S`, a schema with branches."""


async def run_bounded(workers: WorkerPool | None, fn: Callable[..., T], *args: Any) -> T:
    """The one doorway for CPU-bound verifier work (regex, JSON Schema, answer extraction).

    First ``fn(*args, inline=True)`` right here on the loop: a regex on "42" or a tiny JSON
    pays no hop. ``fn`` must then finish within about :data:`INLINE_BUDGET_S` or raise
    :class:`NotCheap`; if it does, ``fn(*args)`` runs in a worker process of ``workers`` (a
    default pool when None), under its time and memory budget, killed if the caller is
    cancelled. ``fn`` must be a module-level function and its arguments picklable.
    """
    try:
        return fn(*args, inline=True)
    except NotCheap:
        pass
    if workers is None:
        from bestofk.verifiers.workers import default_pool

        workers = default_pool()
    return await workers.run(fn, *args)


class TargetNotAllowedError(ValueError):
    """A spec names an endpoint or model outside ``VerifierResources.allowed_models``.

    Raised when the verifier is built, before anything is generated: the request, not a
    verdict, should fail, since every candidate's verdict would be this same error."""

    def __init__(self, target: str, what: str) -> None:
        super().__init__(f"{what} {target!r} is not among the targets this server allows")
        self.target = target
        self.what = what


async def run_blocking(fn: Callable[..., T], *args: Any) -> T:
    """The doorway for blocking calls that wait rather than compute (a model, a sandbox's
    pipes): run in a worker thread, off the loop. CPU-bound checks use :func:`run_bounded`."""
    return await anyio.to_thread.run_sync(fn, *args)
