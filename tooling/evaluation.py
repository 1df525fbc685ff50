"""``bestofk eval``: pass@1, the pass@k ceiling, and what each selection policy recovers.

For each task one ``/generate`` request samples N = max(K) candidates with the task's own
verifiers (the ground truth: a candidate is correct when it passes all of them) plus any extra
signal verifiers (the judge). Best-of-k is then computed offline and exactly: the expected
accuracy of the server's own selection code over every size-k subset of those N (C(8, 4) = 70
at most for N = 8), with ``sample``'s draw replaced by its probabilities. So every k and policy
is compared on the same samples and, by construction, best-of-1 is pass@1 for every policy and
best-of-k never exceeds pass@k, the unbiased estimator of Chen et al. (2021), which is the
share of those subsets holding a correct candidate.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx

from bestofk.service.selection import Policy, Scored, SelectionConfig, choice_probabilities, ranked
from bestofk.verifiers.answers import answer_keys
from bestofk.verifiers.base import Candidate

SIGNALS = ("verifiers", "judge", "none")
"""What selection sees: the task's verifiers, only an LLM judge, or nothing (logprob only)."""


@dataclass(frozen=True, slots=True)
class Task:
    """One prompt with the verifiers that decide whether an answer is right."""

    id: str
    family: str
    prompt: str
    verifiers: list[dict[str, Any]]
    profile: str | None = None
    """A server profile to ask under (``think``: the demo's reasoning parser)."""


MAX_SUBSETS = 2_000
"""``vote`` and ``sample`` above this many size-k subsets (N > 12): the mean over this many,
evenly spread through them, an estimate (``argmax`` has a closed form and stays exact)."""


class TaskFileError(ValueError):
    """A task file line that is not a task: the message names the file and line."""


def load_tasks(path: Path, families: Sequence[str] = ()) -> list[Task]:
    """Tasks from a JSONL file, optionally only some families."""
    tasks = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
            tasks.append(
                Task(raw["id"], raw["family"], raw["prompt"], raw["verifiers"], raw.get("profile"))
            )
        except (ValueError, KeyError, TypeError) as exc:
            what = f"no {exc} field" if isinstance(exc, KeyError) else str(exc)
            raise TaskFileError(f"{path} line {number} is not a task: {what}") from None
    return [t for t in tasks if not families or t.family in families]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct: 1 - C(n-c, k) / C(n, k).

    A k above n means all n samples (there are no more to draw)."""
    k = min(k, n)
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


@dataclass(slots=True)
class TaskSamples:
    """The N scored candidates of one task, reduced to what evaluation needs."""

    task: Task
    texts: list[str]
    correct: list[bool]
    signal_scores: dict[str, list[float]]
    required_ok: list[bool]
    mean_logprobs: list[float | None]
    tokens: list[int]
    latency_ms: float
    reasoning_tokens: list[int] = field(default_factory=list)
    """Each candidate's tokens before its answer (with a reasoning parser; else none)."""
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    """The server's selection for the task's profile, each policy is computed with (its
    ``beta``, its ``tie_break``)."""
    _answers: dict[int, str] | None = None

    @property
    def answers(self) -> dict[int, str]:
        """Each candidate's ``vote`` cluster, found once for all of them (math-verify compares
        answers pairwise: once per task, not once per subset); none for a candidate without an
        answer."""
        if self._answers is None:
            # An empty text has no answer (thinking cut short): it joins no cluster.
            given = [i for i, text in enumerate(self.texts) if text.strip()]
            keys = answer_keys([self.texts[i] for i in given])
            self._answers = dict(zip(given, keys, strict=True))
        return self._answers

    def pool(self, indices: Iterable[int], signal: str) -> list[Scored]:
        """Candidates as the selection code sees them under ``signal``."""
        out = []
        for i in indices:
            s = Scored(Candidate(i, self.texts[i], mean_logprob=self.mean_logprobs[i]), [])
            s.score = self.signal_scores[signal][i]
            s.required_ok = self.required_ok[i] if signal == "verifiers" else True
            out.append(s)
        return out


def _reduce(
    task: Task, response: dict[str, Any], signals: Sequence[str], selection: SelectionConfig
) -> TaskSamples:
    truth_types = {v["type"] for v in task.verifiers}
    weights = {v["type"]: float(v.get("weight", 1.0)) for v in task.verifiers}
    required = {v["type"] for v in task.verifiers if v.get("required")}
    candidates = sorted(response["candidates"], key=lambda c: c["index"])
    scores: dict[str, list[float]] = {s: [] for s in signals}
    correct, required_ok = [], []
    for c in candidates:
        truth = [v for v in c["verdicts"] if v["verifier"] in truth_types]
        correct.append(bool(truth) and all(v["passed"] for v in truth))
        required_ok.append(all(v["passed"] for v in truth if v["verifier"] in required))
        total = sum(weights[v["verifier"]] for v in truth) or 1.0
        if "verifiers" in scores:
            scores["verifiers"].append(
                sum(weights[v["verifier"]] * v["score"] for v in truth) / total
            )
        if "judge" in scores:
            judged = [v["score"] for v in c["verdicts"] if v["verifier"] == "judge"]
            scores["judge"].append(statistics.fmean(judged) if judged else 0.0)
        if "none" in scores:
            scores["none"].append(0.0)
    return TaskSamples(
        task=task,
        texts=[c["text"] for c in candidates],
        correct=correct,
        signal_scores=scores,
        required_ok=required_ok,
        mean_logprobs=[c["mean_logprob"] for c in candidates],
        tokens=[c["tokens"] for c in candidates],
        latency_ms=response["timing"]["total_ms"],
        reasoning_tokens=[c.get("reasoning_tokens") or 0 for c in candidates],
        selection=selection,
    )


def subsets(n: int, k: int) -> Iterable[tuple[int, ...]]:
    """Every size-k subset of range(n) (k above n: the whole range), or ``MAX_SUBSETS`` of them
    taken at even steps through the lexicographic order when there are more."""
    k = min(k, n)
    total = math.comb(n, k)
    every = itertools.combinations(range(n), k)
    if total <= MAX_SUBSETS:
        return every
    step = total / MAX_SUBSETS
    wanted = {int(i * step) for i in range(MAX_SUBSETS)}
    return (s for i, s in enumerate(every) if i in wanted)


def best_of_k(samples: TaskSamples, k: int, policy: Policy, signal: str) -> float:
    """Expected accuracy of ``policy`` choosing among a uniformly random size-k subset."""
    config = replace(samples.selection, policy=policy)
    n = len(samples.texts)
    if policy == "argmax":
        k = min(k, n)
        order = ranked(samples.pool(range(n), signal), config.by_logprob)
        # The ranking is a total order, so a subset's choice is its highest-ranked member:
        # order[r] exactly when order[r] is in it and the other k-1 come from the n-1-r below.
        hits = sum(
            math.comb(n - 1 - r, k - 1) * samples.correct[s.candidate.index]
            for r, s in enumerate(order)
        )
        return hits / math.comb(n, k)
    total = count = 0.0
    for subset in subsets(n, k):
        pool = samples.pool(subset, signal)
        total += sum(
            p * samples.correct[s.candidate.index]
            for s, p in choice_probabilities(
                pool, config, samples.answers if policy == "vote" else None
            )
        )
        count += 1
    return total / count


@dataclass(slots=True)
class Report:
    """Per family (and "all"): pass@1, pass@k, best-of-k per signal and policy, price."""

    ks: list[int]
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {"ks": self.ks, "families": self.rows, "skipped": self.skipped}


def summarise(
    all_samples: Sequence[TaskSamples],
    ks: Sequence[int],
    policies: Sequence[Policy],
    signals: Sequence[str],
) -> Report:
    """Aggregate per family and overall."""
    report = Report(ks=list(ks))
    by_family: dict[str, list[TaskSamples]] = defaultdict(list)
    for s in all_samples:
        by_family[s.task.family].append(s)
    by_family["all"] = list(all_samples)  # inserted last, so it prints last
    for family, group in by_family.items():
        row: dict[str, Any] = {"tasks": len(group)}
        row["pass@1"] = statistics.fmean(sum(s.correct) / len(s.correct) for s in group)
        row["pass@k"] = {
            k: statistics.fmean(pass_at_k(len(s.correct), sum(s.correct), k) for s in group)
            for k in ks
        }
        row["best_of_k"] = {
            f"{signal}/{policy}": {
                k: statistics.fmean(best_of_k(s, k, policy, signal) for s in group) for k in ks
            }
            for signal in signals
            for policy in policies
        }
        tokens = statistics.fmean(statistics.fmean(s.tokens) for s in group)
        row["tokens_per_request"] = {k: tokens * k for k in ks}
        thinking = statistics.fmean(statistics.fmean(s.reasoning_tokens or [0]) for s in group)
        row["thinking_tokens_per_request"] = {k: thinking * k for k in ks}
        row["latency_ms_at_max_k"] = statistics.median(s.latency_ms for s in group)
        report.rows[family] = row
    return report


async def collect(
    client: httpx.AsyncClient,
    tasks: Sequence[Task],
    n: int,
    signals: Sequence[str],
    sampling: dict[str, Any],
    concurrency: int = 4,
    on_done: Callable[[], None] = lambda: None,
) -> tuple[list[TaskSamples], dict[str, str]]:
    """Sample N candidates per task through the API; families the server cannot verify are
    skipped, by name, with the server's reason. ``sampling`` holds only what the caller set
    (the server's defaults apply to the rest); a ``seed`` there seeds task i's request with
    seed + i, so a run can be repeated."""
    selections = await server_selections(client)
    gate = asyncio.Semaphore(concurrency)
    skipped: dict[str, str] = {}
    extra = [{"type": "judge", "weight": 0.0}] if "judge" in signals else []

    async def one(number: int, task: Task) -> TaskSamples | None:
        async with gate:
            if task.family in skipped:
                on_done()
                return None
            body = {
                "prompt": task.prompt,
                "k": n,
                "sampling": _seeded(sampling, number),
                "verifiers": [*task.verifiers, *extra],
            }
            if task.profile is not None:
                body["profile"] = task.profile
            reply = await client.post("/generate", json=body, timeout=600)
            on_done()
            if reply.status_code == 400 and "unknown verifier type" in reply.text:
                skipped[task.family] = reply.json()["error"]["message"]
                return None
            reply.raise_for_status()
            selection = selections.get(task.profile) or selections.get(None) or SelectionConfig()
            return _reduce(task, reply.json(), signals, selection)

    results = await asyncio.gather(*(one(i, t) for i, t in enumerate(tasks)))
    kept = [r for r in results if r is not None and r.task.family not in skipped]
    return kept, skipped


async def server_selections(client: httpx.AsyncClient) -> dict[str | None, SelectionConfig]:
    """The server's default selection, by profile (None: no profile), from ``/v1/models``;
    none from a server that does not list them."""
    reply = await client.get("/v1/models", timeout=60)
    reply.raise_for_status()
    out: dict[str | None, SelectionConfig] = {}
    for entry in reply.json().get("data", []):
        defaults = entry.get("default_selection")
        if isinstance(defaults, dict):
            _, _, profile = str(entry.get("id", "")).partition("@")
            known = {k: v for k, v in defaults.items() if k in ("policy", "beta", "tie_break")}
            out[profile or None] = SelectionConfig(**known)
    return out


def _seeded(sampling: dict[str, Any], number: int) -> dict[str, Any]:
    seed = sampling.get("seed")
    return sampling if seed is None else {**sampling, "seed": seed + number}


def plot(report: Report, path: Path) -> None:
    """Accuracy vs K, one panel per family in a grid, one legend for all: a line per
    signal/policy, pass@k dashed (the ceiling), pass@1 dotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = list(report.rows)
    columns = min(3, len(families))
    rows = math.ceil(len(families) / columns)
    fig, axes = plt.subplots(
        rows, columns, figsize=(4.0 * columns, 3.2 * rows + 1.0), squeeze=False, sharey=True
    )
    ks = report.ks
    for ax, family in zip(axes.flat, families, strict=False):
        row = report.rows[family]
        # Drawn last of the lines: best-of-k reaching the ceiling would hide it.
        ax.plot(ks, [row["pass@k"][k] for k in ks], "k--", label="pass@k (ceiling)", zorder=5)
        ax.axhline(row["pass@1"], color="grey", linestyle=":", label="pass@1")
        for name, curve in row["best_of_k"].items():
            ax.plot(ks, [curve[k] for k in ks], marker="o", label=f"best-of-k {name}")
        ax.set_xscale("log", base=2)
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.set_ylim(0, 1.05)
        ax.grid(alpha=0.3)
        ax.set_title(f"{family} ({row['tasks']} tasks)")
    for ax in axes.flat[len(families) :]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("K")
    for ax in axes[:, 0]:
        ax.set_ylabel("accuracy")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), frameon=False)
    fig.tight_layout(rect=(0, 1.0 / (3.2 * rows + 1.0), 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
