"""The ways of getting one answer that the benchmark compares, each as one timed "request".

Every mode turns (K, request number) into one :class:`Outcome`: the wall time the caller waits
for its answer and the tokens the engine generated for it. Direct modes call the vLLM backend
the way a user without bestofk would (non-streamed, no logprobs); bestofk modes call the
service that sits in front of that same backend, so both share one engine.

    a  direct vLLM n=1                 one sample, no choice
    b  direct vLLM n=K                 K samples in one call (the baseline of every ratio)
    c  bestofk best-of-K, regex        the service's cost over (b)
    d  bestofk best-of-K, unit_tests   the demo code tasks, sandboxed
    e  K sequential n=1 calls          the fallback of proxies that never send n
    f  K concurrent n=1 calls          the same, fanned out
    g  OptiLLM bon                     K samples, then the model rates each (its own calls)
    j  bestofk best-of-K, judge        the comparable of (g): the engine judges each candidate
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
"""(c)'s check: the answer is a bare number (cheap; about 3 in 4 demo answers pass)."""

MODE_LABELS: dict[str, str] = {
    "a": "direct vLLM n=1",
    "b": "direct vLLM n=K",
    "c": "bestofk regex",
    "d": "bestofk unit_tests",
    "e": "K sequential n=1",
    "f": "K concurrent n=1",
    "g": "OptiLLM bon",
    "j": "bestofk judge",
}
ALL_MODES = tuple(MODE_LABELS)
BASELINE = "b"


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
    """What every mode asks for: one prompt and sampling, so only the route differs."""

    prompt: str = FACTORIAL_PROMPT
    regex: str = NUMBER_ONLY
    max_tokens: int = 32
    temperature: float = 1.0
    code_tasks: Sequence[Task] = ()
    code_max_tokens: int = 160
    early_exit_task: Task | None = None
    """The early-exit request: about half its candidates pass, and those are the short ones."""
    early_exit_max_tokens: int = 128


@dataclass(frozen=True, slots=True)
class Endpoints:
    """Where the servers under test listen."""

    vllm: str
    bestofk: str
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
            "a": lambda client, k, i: self._direct(client, 1),
            "b": lambda client, k, i: self._direct(client, k),
            "c": self._regex,
            "d": self._unit_tests,
            "e": self._sequential,
            "f": self._concurrent,
            "g": self._optillm,
            "j": self._judge,
        }
        return calls[mode]

    async def _completions(self, client: httpx.AsyncClient, n: int) -> int:
        body = {
            "model": self.ep.model,
            "prompt": self.w.prompt,
            "n": n,
            "max_tokens": self.w.max_tokens,
            "temperature": self.w.temperature,
        }
        data = _json(await client.post(self.ep.vllm + "/v1/completions", json=body))
        if len(data.get("choices") or ()) != n:
            raise ModeError(f"expected {n} choices: {str(data)[:300]}")
        return int(data["usage"]["completion_tokens"])

    async def _direct(self, client: httpx.AsyncClient, n: int) -> Outcome:
        start = time.perf_counter()
        tokens = await self._completions(client, n)
        return Outcome(time.perf_counter() - start, tokens)

    async def _sequential(self, client: httpx.AsyncClient, k: int, i: int) -> Outcome:
        start = time.perf_counter()
        tokens = 0
        for _ in range(k):
            tokens += await self._completions(client, 1)
        return Outcome(time.perf_counter() - start, tokens)

    async def _concurrent(self, client: httpx.AsyncClient, k: int, i: int) -> Outcome:
        start = time.perf_counter()
        counts = await asyncio.gather(*(self._completions(client, 1) for _ in range(k)))
        return Outcome(time.perf_counter() - start, sum(counts))

    async def generate(
        self,
        client: httpx.AsyncClient,
        prompt: str,
        k: int,
        verifiers: Sequence[dict[str, Any]],
        max_tokens: int,
        early_exit: bool = False,
    ) -> Outcome:
        """One bestofk ``/generate``; raises ModeError unless it answered."""
        body: dict[str, Any] = {
            "prompt": prompt,
            "k": k,
            "sampling": {"temperature": self.w.temperature, "max_tokens": max_tokens},
            "verifiers": list(verifiers),
        }
        if early_exit:
            body["early_exit"] = {"min_score": 1.0}
        start = time.perf_counter()
        data = _json(await client.post(self.ep.bestofk + "/generate", json=body))
        elapsed = time.perf_counter() - start
        usage = data["usage"]
        return Outcome(elapsed, usage["completion_tokens"] + usage["verifier_tokens"], data)

    async def _regex(self, client: httpx.AsyncClient, k: int, i: int) -> Outcome:
        spec = {"type": "regex", "pattern": self.w.regex}
        return await self.generate(client, self.w.prompt, k, [spec], self.w.max_tokens)

    async def _unit_tests(self, client: httpx.AsyncClient, k: int, i: int) -> Outcome:
        if not self.w.code_tasks:
            raise ModeError("no code tasks loaded")
        task = self.w.code_tasks[i % len(self.w.code_tasks)]
        return await self.generate(client, task.prompt, k, task.verifiers, self.w.code_max_tokens)

    def _chat_body(self, k: int) -> dict[str, Any]:
        return {
            "model": self.ep.model,
            "messages": [{"role": "user", "content": self.w.prompt}],
            "max_tokens": self.w.max_tokens,
            "temperature": self.w.temperature,
        }

    async def _judge(self, client: httpx.AsyncClient, k: int, i: int) -> Outcome:
        # The chat endpoint, like OptiLLM's: the same request shape on both sides of (g)/(j).
        body = {**self._chat_body(k), "best_of": k, "verifiers": [{"type": "judge"}]}
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
        body = {**self._chat_body(k), "optillm_approach": "bon"}
        start = time.perf_counter()
        data = _json(await client.post(url + "/v1/chat/completions", json=body))
        elapsed = time.perf_counter() - start
        return Outcome(elapsed, int((data.get("usage") or {}).get("completion_tokens") or 0))
