"""``bestofk eval --adaptive``: accuracy against generated tokens and latency, per way of spending.

Each task is asked once per configuration (K = 1, 2, 4, 8 fixed, K = 8 with early exit, and
adaptive K up to 8), with the task's verifiers, which are the ground truth: a request is
correct when the chosen candidate passes them all. Requests go one at a time, the
configurations of a task back to back, so the machine's load falls on all of them alike; each
task's requests share one seed, and candidate ``i`` of every configuration is seeded
``seed + i``, so the configurations draw from the same candidates and differ only in how many
they sample and when they stop. Tokens are what the engine generated for the request: the
growth of its ``vllm:generation_tokens_total`` across the request (exact, as requests go one
at a time; a server without vLLM's metrics, one in front of backends, gives the response's
``usage.completion_tokens`` instead, which misses up to ``STREAM_INTERVAL`` tokens of each
aborted candidate: those generated since its last delta). Latency is the client's wall time.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bestofk.tooling.evaluation import Task


@dataclass(frozen=True, slots=True)
class Config:
    """One way to spend compute on a request."""

    name: str
    k: int
    early_exit: bool = False
    adaptive: bool | dict[str, Any] = False

    def fields(self) -> dict[str, Any]:
        """The request fields beside prompt, sampling and verifiers."""
        body: dict[str, Any] = {"k": self.k}
        if self.early_exit:
            body["early_exit"] = {"min_score": 1.0}
        if self.adaptive:
            body["adaptive"] = self.adaptive
        return body


RETRIES = 20
"""A 503 (the engine restarting, say on a shared machine short of memory) is retried after
its Retry-After, this many times; the retried request's time is the one that answered."""


async def _ask(client: httpx.AsyncClient, body: dict[str, Any]) -> tuple[httpx.Response, float]:
    """POST ``/generate``; the reply and its wall time in ms."""
    import asyncio

    for _ in range(RETRIES):
        start = time.perf_counter()
        reply = await client.post("/generate", json=body, timeout=600)
        elapsed = (time.perf_counter() - start) * 1000
        if reply.status_code != 503:
            break
        await asyncio.sleep(float(reply.headers.get("retry-after") or 5))
    return reply, elapsed


ENGINE_TOKENS = "vllm:generation_tokens_total"


async def _engine_tokens(client: httpx.AsyncClient) -> float | None:
    """The in-process engine's generated-token counter, or None without one."""
    reply = await client.get("/metrics", timeout=30)
    if reply.status_code != 200:
        return None
    values = [
        float(line.rsplit(" ", 1)[1])
        for line in reply.text.splitlines()
        if line.startswith(ENGINE_TOKENS)
    ]
    return sum(values) if values else None


def configs(ks: Sequence[int], adaptive: bool | dict[str, Any] = True) -> list[Config]:
    """K fixed for each of ``ks``, then the largest K with early exit and adaptive."""
    top = max(ks)
    return [
        *(Config(f"K={k}", k) for k in ks),
        Config(f"K={top} early exit", top, early_exit=True),
        Config(f"adaptive (K<={top})", top, adaptive=adaptive),
    ]


@dataclass(slots=True)
class Outcome:
    """One request's result."""

    correct: bool
    tokens: int
    """Generated for it: by the engine's counter where there is one, else ``usage``."""
    usage_tokens: int
    """The response's ``usage.completion_tokens``."""
    latency_ms: float
    sampled: int
    waves: int


@dataclass(slots=True)
class Row:
    """One configuration over the task set."""

    name: str
    accuracy: float
    tokens: float
    """Mean completion tokens generated per request."""
    usage_tokens: float
    """Mean ``usage.completion_tokens`` per request."""
    p50_ms: float
    sampled: float
    """Mean candidates started per request."""
    waves: float


@dataclass(slots=True)
class ComputeReport:
    """Per configuration, over every task the server could verify."""

    tasks: int
    rows: list[Row] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        from dataclasses import asdict

        return {
            "tasks": self.tasks,
            "rows": [asdict(r) for r in self.rows],
            "skipped": self.skipped,
        }

    def markdown(self, against: str | None = None) -> str:
        """The table; ``against`` names the row tokens and p50 are also given relative to."""
        base = next((r for r in self.rows if r.name == against), None)
        lines = [
            "| configuration | accuracy | tokens/request | usage tokens | p50 latency (ms) | "
            "candidates sampled | waves |" + (" tokens vs base | p50 vs base |" if base else ""),
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
            + (" ---: | ---: |" if base else ""),
        ]
        for r in self.rows:
            line = (
                f"| {r.name} | {r.accuracy:.3f} | {r.tokens:.1f} | {r.usage_tokens:.1f} | "
                f"{r.p50_ms:.0f} | "
                f"{r.sampled:.2f} | {r.waves:.2f} |"
            )
            if base is not None:
                line += f" {r.tokens / base.tokens:.0%} | {r.p50_ms / base.p50_ms:.2f}x |"
            lines.append(line)
        return "\n".join(lines) + "\n"


async def measure(
    client: httpx.AsyncClient,
    tasks: Sequence[Task],
    plan: Sequence[Config],
    sampling: dict[str, Any],
    on_done: Callable[[], None] = lambda: None,
) -> ComputeReport:
    """Ask every task under every configuration; families the server cannot verify are
    skipped by name with its reason. ``sampling``'s ``seed`` seeds task i's requests seed + i."""
    outcomes: dict[str, list[Outcome]] = {c.name: [] for c in plan}
    skipped: dict[str, str] = {}
    counted = 0
    for number, task in enumerate(tasks):
        if task.family in skipped:
            on_done()
            continue
        seed = sampling.get("seed")
        seeded = sampling if seed is None else {**sampling, "seed": seed + number}
        got: dict[str, Outcome] = {}
        for config in plan:
            body: dict[str, Any] = {
                "prompt": task.prompt,
                "sampling": seeded,
                "verifiers": task.verifiers,
                "return_candidates": False,
                **config.fields(),
            }
            if task.profile is not None:
                body["profile"] = task.profile
            before = await _engine_tokens(client)
            reply, elapsed = await _ask(client, body)
            if reply.status_code == 400 and "unknown verifier type" in reply.text:
                skipped[task.family] = reply.json()["error"]["message"]
                break
            reply.raise_for_status()
            data = reply.json()
            usage = int(data["usage"]["completion_tokens"])
            after = await _engine_tokens(client) if before is not None else None
            got[config.name] = Outcome(
                correct=bool(data["passed"]),
                tokens=int(after - before) if after is not None and before is not None else usage,
                usage_tokens=usage,
                latency_ms=elapsed,
                sampled=data["stats"]["sampled"],
                waves=data["stats"]["waves"],
            )
        on_done()
        if task.family in skipped:
            continue
        counted += 1
        for name, outcome in got.items():
            outcomes[name].append(outcome)
    report = ComputeReport(tasks=counted, skipped=skipped)
    for config in plan:
        done = outcomes[config.name]
        if not done:
            continue
        report.rows.append(
            Row(
                name=config.name,
                accuracy=statistics.fmean(o.correct for o in done),
                tokens=statistics.fmean(o.tokens for o in done),
                usage_tokens=statistics.fmean(o.usage_tokens for o in done),
                p50_ms=statistics.median(o.latency_ms for o in done),
                sampled=statistics.fmean(o.sampled for o in done),
                waves=statistics.fmean(o.waves for o in done),
            )
        )
    return report


BENCH_SAMPLING = {"temperature": 1.0, "max_tokens": 160, "seed": 0}
"""``bestofk eval``'s defaults, so ``bestofk bench --adaptive`` measures what it does."""


def bench(
    model: str,
    tasks_path: Path,
    ks: Sequence[int],
    logs: Path | None = None,
    log: Callable[[str], None] = print,
) -> ComputeReport:
    """``bestofk bench --adaptive``: start an in-process bestofk on ``model``, measure every
    configuration on the task set, stop it."""
    import asyncio

    from bestofk.tooling.bench.stack import logs_dir, start_local_bestofk
    from bestofk.tooling.evaluation import load_tasks

    tasks = load_tasks(tasks_path)
    directory = logs_dir(logs)
    directory.mkdir(parents=True, exist_ok=True)
    log(f"starting bestofk with an in-process engine on {model} (logs in {directory})")
    server = start_local_bestofk(directory / "bestofk-adaptive.log", model)
    try:
        server.wait_ready(600)

        async def run() -> ComputeReport:
            async with httpx.AsyncClient(base_url=server.url) as client:
                return await measure(client, tasks, configs(ks), BENCH_SAMPLING)

        return asyncio.run(run())
    finally:
        server.stop()


def plot(report: ComputeReport, path: Path) -> None:
    """Accuracy against tokens per request: fixed K as a line, early exit and adaptive as
    points, each labelled with its p50 latency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    fixed = [r for r in report.rows if r.name.startswith("K=") and "early" not in r.name]
    ax.plot(
        [r.tokens for r in fixed],
        [r.accuracy for r in fixed],
        "o-",
        color="grey",
        label="fixed K",
    )
    for r in fixed:
        ax.annotate(r.name, (r.tokens, r.accuracy), textcoords="offset points", xytext=(4, -12))
    for r, style in zip(
        [r for r in report.rows if r not in fixed], ("s", "D", "^", "v"), strict=False
    ):
        ax.plot([r.tokens], [r.accuracy], style, markersize=9, label=r.name)
    for r in report.rows:
        ax.annotate(
            f"p50 {r.p50_ms:.0f} ms",
            (r.tokens, r.accuracy),
            textcoords="offset points",
            xytext=(4, 6),
            fontsize=7,
            color="dimgrey",
        )
    ax.set_xlabel("completion tokens per request")
    ax.set_ylabel("accuracy (chosen answer passes the task's verifiers)")
    ax.set_title(f"accuracy against tokens ({report.tasks} tasks)")
    ax.set_ylim(0, 1.05)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
