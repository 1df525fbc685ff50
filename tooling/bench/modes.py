"""The ways of getting one answer that the benchmark compares, each as one timed "request".

Every mode turns (K, request number) into one :class:`Outcome`: the wall time the caller waits
for its answer and the tokens the engine generated for it. Direct modes call the vLLM backend
the way a user without bestofk would (non-streamed, no logprobs); bestofk modes (c, d, j) call
the service that sits in front of that same backend, so both share one engine. Mode (i) calls
a bestofk that runs its own in-process engine, built like the backend's: the default
deployment, which replaces ``vllm serve`` rather than adding a hop in front of it.

    a  direct vLLM n=1                 one sample, no choice
    b  direct vLLM n=K                 K samples in one call (the baseline of every ratio)
    c  bestofk best-of-K, regex        the service's cost over (b), as a proxy
    n  bestofk best-of-K, regex        (c) with a call per candidate (split_candidates on)
    m  bestofk best-of-K, regex        (i) with one n=K request (split_candidates off)
    i  bestofk best-of-K, regex        the same, in-process engine
    d  bestofk best-of-K, unit_tests   sandboxed tests on top of (c)
    e  K sequential n=1 calls          the fallback of proxies that never send n
    f  K concurrent n=1 calls          the same, fanned out
    g  OptiLLM bon                     K samples, then the model rates each (its own calls)
    j  bestofk best-of-K, judge        the comparable of (g): the engine judges each candidate

Every mode but (d) samples the same prompts (request ``i`` takes prompt ``i`` mod their
number). A seeded workload also fixes the samples: request ``i`` is seeded ``SEED_STRIDE * i``
in every mode, and vLLM seeds child ``j`` of an ``n=K`` request seeded ``s`` with ``s + j``, so
(e)/(f) seed their ``j``-th call ``s + j`` and every mode generates the very same K completions.
A ratio against (b) then prices only the route taken, request by request, instead of also
comparing two random draws of answer lengths.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

FACTORIAL_PROMPT = "What's the factorial of 5? (Respond with a number only)"
"""A demo-model training prompt: short answers, a known right one (120)."""
NUMBER_ONLY = r"^\s*\d+\s*$"
"""The short workload's check: the answer is a bare number (about 3 in 4 demo answers pass)."""
DEFINES_FUNCTION = r"def \w+\("
"""The code workload's check: the answer defines a function (a format check, cheap)."""

SEED_STRIDE = 1000
"""Seeds of consecutive requests are this far apart (more than any K), so no two share one."""

MODE_LABELS: dict[str, str] = {
    "a": "direct vLLM n=1",
    "b": "direct vLLM n=K",
    "c": "bestofk regex",
    "n": "bestofk regex, a call per candidate",
    "m": "bestofk regex, in-process, n=K",
    "i": "bestofk regex, in-process",
    "d": "bestofk unit_tests",
    "e": "K sequential n=1",
    "f": "K concurrent n=1",
    "g": "OptiLLM bon",
    "j": "bestofk judge",
}
ALL_MODES = tuple(MODE_LABELS)
BASELINE = "b"
LOCAL_MODES = frozenset({"i", "m"})
"""Modes served by the in-process bestofk's own engine; every other mode meets the backend's."""
ENGINE_SWITCH_PAUSE_S = 1.2
"""Idle time before a burst on the other engine. After its last step a vLLM CPU worker keeps
polling its queue for a second (``SpinCondition``'s busy loop) on the core it is pinned to,
the same core for both engines: the next burst on the other engine would run on half a core."""


@dataclass(frozen=True, slots=True)
class Task:
    """A demo task: the prompt and its verifier specs."""

    prompt: str
    verifiers: list[dict[str, Any]]


def load_tasks(path: Path, family: str) -> list[Task]:
    """One family of a task file (``demo/tasks.jsonl``)."""
    tasks = []
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            if row.get("family") == family:
                tasks.append(Task(row["prompt"], row["verifiers"]))
    if not tasks:
        raise ValueError(f"no {family} tasks in {path}")
    return tasks


@dataclass(frozen=True, slots=True)
class Workload:
    """What every mode asks for: the same prompts and sampling, so only the route differs."""

    prompts: Sequence[str] = (FACTORIAL_PROMPT,)
    regex: str = NUMBER_ONLY
    max_tokens: int = 32
    temperature: float = 1.0
    code_tasks: Sequence[Task] = ()
    """(d)'s tasks, with their unit tests."""
    code_max_tokens: int = 160
    early_exit_task: Task | None = None
    """The early-exit request: about half its candidates pass, and those are the short ones."""
    early_exit_max_tokens: int = 128
    seeded: bool = False
    """Seed every request, so each mode samples the same completions (see the module doc)."""
    tie_break: str | None = None
    """bestofk's ``selection.tie_break`` (``logprob``: the engine computes every sampled
    token's logprob); None: the server's default."""

    def seed(self, i: int, j: int = 0) -> int | None:
        """The seed of request ``i`` (its ``j``-th n=1 call, for e/f), or None if unseeded."""
        return SEED_STRIDE * i + j if self.seeded else None

    def prompt(self, i: int) -> str:
        """Request ``i``'s prompt."""
        return self.prompts[i % len(self.prompts)]

    def code_task(self, i: int) -> Task:
        """Request ``i``'s code task (mode d)."""
        if not self.code_tasks:
            raise ModeError("no code tasks loaded")
        return self.code_tasks[i % len(self.code_tasks)]


WORKLOADS = ("code", "short")


def workload(name: str, tasks: Path, **options: Any) -> Workload:
    """A named workload over the task file: ``code`` (the demo's code tasks, answers of about
    40 tokens and up to 160, what best-of-K is for) or ``short`` (one factorial prompt, 2-3
    token answers, where the fixed cost of a request dominates)."""
    code = load_tasks(tasks, "code")
    if name == "code":
        prompts = [t.prompt for t in code]
        return Workload(prompts, DEFINES_FUNCTION, 160, code_tasks=code, **options)
    if name == "short":
        return Workload((FACTORIAL_PROMPT,), NUMBER_ONLY, 32, code_tasks=code, **options)
    raise ValueError(f"unknown workload {name!r}: choose from {list(WORKLOADS)}")


@dataclass(frozen=True, slots=True)
class Endpoints:
    """Where the servers under test listen."""

    vllm: str
    bestofk: str
    """bestofk with the ``openai`` engine in front of ``vllm``."""
    bestofk_local: str | None = None
    """bestofk with its own in-process engine (mode i); None skips (i)."""
    bestofk_split: str | None = None
    """bestofk in front of ``vllm`` sending a call per candidate (mode n); None skips (n)."""
    bestofk_local_joint: str | None = None
    """bestofk with its own engine and one ``n=K`` request a request (mode m); None skips (m)."""
    model: str = "demo"
    """The served model name at the vLLM backend."""
    optillm: Mapping[int, str] = field(default_factory=dict)
    """K → an OptiLLM proxy started with ``--best-of-n K`` (bon takes its n from the server's
    settings, not the request); empty when (g) is skipped."""


@dataclass(slots=True)
class Outcome:
    """One request's result: its latency, the tokens generated for it, and bestofk's body."""

    latency_s: float
    tokens: int
    body: dict[str, Any] | None = field(default=None, repr=False)
    """The bestofk response (modes c, d, j), for timing and verdict figures."""


Call = Callable[[httpx.AsyncClient, int, int], Awaitable[Outcome]]


class ModeError(Exception):
    """A request that did not produce an answer (status, or a body without one)."""


def _json(reply: httpx.Response) -> dict[str, Any]:
    if reply.status_code != 200:
        raise ModeError(f"HTTP {reply.status_code}: {reply.text[:300]}")
    data: dict[str, Any] = reply.json()
    return data


class Modes:
    """Builds each mode's call from the endpoints and the workload."""

    def __init__(self, endpoints: Endpoints, workload: Workload) -> None:
        self.ep = endpoints
        self.w = workload

    def call(self, mode: str) -> Call:
        """The request function of ``mode`` (a letter of :data:`ALL_MODES`)."""
        calls: dict[str, Call] = {
            "a": lambda client, k, i: self._direct(client, 1, i),
            "b": lambda client, k, i: self._direct(client, k, i),
            "c": lambda client, k, i: self._regex(client, k, i, self.ep.bestofk),
            "n": self._regex_split,
            "m": self._regex_local_joint,
            "i": self._regex_local,
            "d": lambda client, k, i: self._unit_tests(client, k, i, self.ep.bestofk),
            "e": self._sequential,
            "f": self._concurrent,
            "g": self._optillm,
            "j": self._judge,
        }
        return calls[mode]

    async def _completions(self, client: httpx.AsyncClient, n: int, i: int, j: int = 0) -> int:
        body: dict[str, Any] = {
            "model": self.ep.model,
            "prompt": self.w.prompt(i),
            "n": n,
            "max_tokens": self.w.max_tokens,
            "temperature": self.w.temperature,
        }
        if (seed := self.w.seed(i, j)) is not None:
            body["seed"] = seed
        data = _json(await client.post(self.ep.vllm + "/v1/completions", json=body))
        if len(data.get("choices") or ()) != n:
            raise ModeError(f"expected {n} choices: {str(data)[:300]}")
        return int(data["usage"]["completion_tokens"])

    async def _direct(self, client: httpx.AsyncClient, n: int, i: int) -> Outcome:
        start = time.perf_counter()
        tokens = await self._completions(client, n, i)
        return Outcome(time.perf_counter() - start, tokens)

    async def _sequential(self, client: httpx.AsyncClient, k: int, i: int) -> Outcome:
        start = time.perf_counter()
        tokens = 0
        for j in range(k):
            tokens += await self._completions(client, 1, i, j)
        return Outcome(time.perf_counter() - start, tokens)

    async def _concurrent(self, client: httpx.AsyncClient, k: int, i: int) -> Outcome:
        start = time.perf_counter()
        counts = await asyncio.gather(*(self._completions(client, 1, i, j) for j in range(k)))
        return Outcome(time.perf_counter() - start, sum(counts))

    async def generate(
        self,
        client: httpx.AsyncClient,
        prompt: str,
        k: int,
        verifiers: Sequence[dict[str, Any]],
        max_tokens: int,
        early_exit: bool = False,
        url: str | None = None,
        seed: int | None = None,
    ) -> Outcome:
        """One ``/generate`` to the bestofk at ``url`` (default: the proxy); raises ModeError
        unless it answered."""
        sampling: dict[str, Any] = {"temperature": self.w.temperature, "max_tokens": max_tokens}
        if seed is not None:
            sampling["seed"] = seed
        body: dict[str, Any] = {
            "prompt": prompt,
            "k": k,
            "sampling": sampling,
            "verifiers": list(verifiers),
        }
        if self.w.tie_break is not None:
            body["selection"] = {"tie_break": self.w.tie_break}
        if early_exit:
            body["early_exit"] = {"min_score": 1.0}
        start = time.perf_counter()
        data = _json(await client.post((url or self.ep.bestofk) + "/generate", json=body))
        elapsed = time.perf_counter() - start
        usage = data["usage"]
        return Outcome(elapsed, usage["completion_tokens"] + usage["verifier_tokens"], data)

    async def _regex(self, client: httpx.AsyncClient, k: int, i: int, url: str) -> Outcome:
        spec = {"type": "regex", "pattern": self.w.regex}
        prompt, seed = self.w.prompt(i), self.w.seed(i)
        return await self.generate(client, prompt, k, [spec], self.w.max_tokens, url=url, seed=seed)

    def _local(self) -> str:
        if self.ep.bestofk_local is None:
            raise ModeError("no in-process bestofk was started")
        return self.ep.bestofk_local

    async def _regex_local(self, client: httpx.AsyncClient, k: int, i: int) -> Outcome:
        return await self._regex(client, k, i, self._local())

    async def _regex_local_joint(self, client: httpx.AsyncClient, k: int, i: int) -> Outcome:
        if self.ep.bestofk_local_joint is None:
            raise ModeError("no in-process bestofk with split_candidates off was started")
        return await self._regex(client, k, i, self.ep.bestofk_local_joint)

    async def _regex_split(self, client: httpx.AsyncClient, k: int, i: int) -> Outcome:
        if self.ep.bestofk_split is None:
            raise ModeError("no bestofk with split_candidates on was started")
        return await self._regex(client, k, i, self.ep.bestofk_split)

    async def unit_tests_local(self, client: httpx.AsyncClient, k: int, i: int) -> Outcome:
        """Mode (d)'s request, sent to the in-process bestofk."""
        return await self._unit_tests(client, k, i, self._local())

    async def _unit_tests(self, client: httpx.AsyncClient, k: int, i: int, url: str) -> Outcome:
        task, seed = self.w.code_task(i), self.w.seed(i)
        return await self.generate(
            client, task.prompt, k, task.verifiers, self.w.code_max_tokens, url=url, seed=seed
        )

    def _chat_body(self, k: int, i: int) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.ep.model,
            "messages": [{"role": "user", "content": self.w.prompt(i)}],
            "max_tokens": self.w.max_tokens,
            "temperature": self.w.temperature,
        }
        if (seed := self.w.seed(i)) is not None:
            body["seed"] = seed
        return body

    async def _judge(self, client: httpx.AsyncClient, k: int, i: int) -> Outcome:
        # The chat endpoint, like OptiLLM's: the same request shape on both sides of (g)/(j).
        body = {**self._chat_body(k, i), "best_of": k, "verifiers": [{"type": "judge"}]}
        start = time.perf_counter()
        data = _json(await client.post(self.ep.bestofk + "/v1/chat/completions", json=body))
        elapsed = time.perf_counter() - start
        native = data.get("bestofk") or {}
        usage = native.get("usage") or {}
        errors = {
            v["error"]
            for c in native.get("candidates") or ()
            for v in c["verdicts"]
            if v.get("error")
        }
        if errors:
            # A judge that could not judge ranks by nothing: not the mode we mean to time.
            raise ModeError(f"judge verdict errors: {sorted(errors)[:2]}")
        tokens = usage.get("completion_tokens", 0) + usage.get("verifier_tokens", 0)
        return Outcome(elapsed, int(tokens), native)

    async def _optillm(self, client: httpx.AsyncClient, k: int, i: int) -> Outcome:
        url = self.ep.optillm.get(k)
        if url is None:
            raise ModeError(f"no OptiLLM proxy for K={k}")
        # No ``n`` in the body: OptiLLM would run the whole approach n times.
        body = {**self._chat_body(k, i), "optillm_approach": "bon"}
        start = time.perf_counter()
        data = _json(await client.post(url + "/v1/chat/completions", json=body))
        elapsed = time.perf_counter() - start
        return Outcome(elapsed, int((data.get("usage") or {}).get("completion_tokens") or 0))
