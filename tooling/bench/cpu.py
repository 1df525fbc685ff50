"""CPU per request of the bestofk process against an instant backend, beside the direct path.

On a small machine the service's CPU is taken from the engine beside it, so the CPU one request
costs in bestofk, not its latency, is the figure that says what the proxy costs. The backend is
the scripted OpenAI server in ``ok`` mode (:mod:`bestofk.tooling.fake_backend`): every candidate is
two tokens, streamed at once, so what is measured is bestofk's own work (parsing, the pipeline,
verifiers, rendering, metrics, the record) and the backend's, never waiting for a model.

For each K and verifier set, requests go one at a time, first straight to the backend (the direct
path: one streamed ``n=K`` completion, as bestofk sends it), then through bestofk's ``/generate``.
The CPU time of each process tree (``/proc``: every thread, and the verifier worker processes)
over the run, divided by the requests, is the figure; the verdict latency is the mean
``latency_ms`` the verifiers reported.

    bestofk bench --cpu-only [--json OUT]
    python -m bestofk.tooling.bench.cpu [--requests 200] [--k 1,8,32] [--json OUT]

A change is measured against another tree with ``--compare`` (repeatable): each names a tree's
``src/`` (its code goes first on the server's ``PYTHONPATH``) and the server's extra flags. The
servers run at once over one fake backend and take turns, K=8 with one regex verifier, so a
busy machine slows them alike; the figure is each one's median over the rounds:

    python -m bestofk.tooling.bench.cpu --rounds 12 --compare "before=/tmp/before/src" \
        --compare "after=$PWD/src --disable-uvicorn-access-log"
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from bestofk.tooling.bench.targets import descendants, stat_fields
from bestofk.tooling.procs import Server, engine_env, start_bestofk, start_fake_backend

REGEX = {"type": "regex", "pattern": r"^\s*42\s*$"}
CELLS: dict[str, tuple[list[dict[str, Any]], dict[str, Any] | None]] = {
    "none": ([], None),
    "regex": ([REGEX], None),
    # Ties by mean logprob: the engine computes every sampled token's logprob, bestofk parses
    # them (the fake backend sends them either way).
    "regex, tie_break logprob": ([REGEX], {"tie_break": "logprob"}),
    "cheap": (
        [
            REGEX,
            {"type": "exact", "reference": "42"},
            {"type": "json_schema", "schema": {"type": "integer", "minimum": 0}},
        ],
        None,
    ),
}
"""The rows of each K: verifiers (none, one regex, three cheap checks) and selection."""
PROMPT = "What is 6 times 7? Answer with a number only."
MAX_TOKENS = 8
TARGET_K8_REGEX_MS = 1.5
TARGET_VERDICT_MS = 0.5


@dataclass(frozen=True, slots=True)
class CpuRow:
    """One (K, verifier set) cell: CPU milliseconds per request, and the verdicts' latency."""

    k: int
    verifiers: str
    requests: int
    bestofk_ms: float
    """CPU of the bestofk process tree per request through it."""
    backend_via_ms: float
    """CPU of the backend per request through bestofk."""
    backend_direct_ms: float
    """CPU of the backend per request sent to it directly: the direct path."""
    verdict_ms: float | None
    """Mean verdict latency the verifiers reported (None without verifiers)."""
    p50_ms: float
    """Wall-clock p50 through bestofk, one request at a time."""
    direct_p50_ms: float


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its live descendants (every thread of each)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in [pid, *descendants(pid)]:
        if (fields := stat_fields(p)) is not None:  # else exited since the listing
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / ticks


def _timed_loop(
    send: Callable[[], httpx.Response], requests: int, pids: Sequence[int]
) -> tuple[list[float], list[float], list[httpx.Response]]:
    """Send ``requests`` one after another: (CPU s per pid over the run, latencies, replies)."""
    before = [_cpu_s(p) for p in pids]
    latencies, replies = [], []
    for _ in range(requests):
        start_s = time.perf_counter()
        reply = send()
        latencies.append((time.perf_counter() - start_s) * 1000)
        if reply.status_code != 200:
            raise RuntimeError(f"{reply.status_code}: {reply.text[:300]}")
        replies.append(reply)
    return [_cpu_s(p) - b for p, b in zip(pids, before, strict=True)], latencies, replies


def _direct_body(k: int) -> dict[str, Any]:
    # What bestofk sends for the same request by default: a streamed n=K completion with usage
    # and token ids, no logprobs (the default tie-break, by index, needs none).
    return {
        "model": "demo", "prompt": PROMPT, "n": k, "max_tokens": MAX_TOKENS, "stream": True,
        "stream_options": {"include_usage": True}, "return_token_ids": True,
    }  # fmt: skip


def measure(
    bestofk: Server, backend: Server, ks: Sequence[int], requests: int, warmup: int = 20
) -> list[CpuRow]:
    """The table, against running servers (``backend`` is a fake backend in ``ok`` mode)."""
    rows = []
    pids = [bestofk.process.pid, backend.process.pid]
    with httpx.Client(timeout=60) as client:
        for k in ks:
            direct = _direct_body(k)

            def send_direct(body: dict[str, Any] = direct) -> httpx.Response:
                return client.post(backend.url + "/v1/completions", json=body)

            _timed_loop(send_direct, warmup, pids)
            (_, direct_cpu), direct_lat, _ = _timed_loop(send_direct, requests, pids)
            for name, (verifiers, selection) in CELLS.items():
                body = {"prompt": PROMPT, "k": k, "sampling": {"max_tokens": MAX_TOKENS},
                        "verifiers": verifiers}  # fmt: skip
                if selection is not None:
                    body["selection"] = selection

                def send(body: dict[str, Any] = body) -> httpx.Response:
                    return client.post(bestofk.url + "/generate", json=body)

                _timed_loop(send, warmup, pids)
                (own, via), latencies, replies = _timed_loop(send, requests, pids)
                verdicts = [
                    v["latency_ms"]
                    for r in replies
                    for c in r.json()["candidates"]
                    for v in c["verdicts"]
                ]
                rows.append(
                    CpuRow(
                        k=k,
                        verifiers=name,
                        requests=requests,
                        bestofk_ms=own * 1000 / requests,
                        backend_via_ms=via * 1000 / requests,
                        backend_direct_ms=direct_cpu * 1000 / requests,
                        verdict_ms=statistics.fmean(verdicts) if verdicts else None,
                        p50_ms=statistics.median(latencies),
                        direct_p50_ms=statistics.median(direct_lat),
                    )
                )
    return rows


def markdown(rows: Sequence[CpuRow]) -> str:
    """The table, with the targets' verdicts under it."""
    lines = [
        "| K | verifiers | bestofk CPU ms/req | backend CPU ms/req via bestofk "
        "| backend CPU ms/req direct | mean verdict ms | p50 ms via | p50 ms direct |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        verdict = "-" if r.verdict_ms is None else f"{r.verdict_ms:.3f}"
        lines.append(
            f"| {r.k} | {r.verifiers} | {r.bestofk_ms:.2f} | {r.backend_via_ms:.2f} "
            f"| {r.backend_direct_ms:.2f} | {verdict} | {r.p50_ms:.1f} | {r.direct_p50_ms:.1f} |"
        )
    k8 = next((r for r in rows if r.k == 8 and r.verifiers == "regex"), None)
    verdicts = [r.verdict_ms for r in rows if r.verdict_ms is not None]
    lines.append("")
    if k8 is not None:
        met = "met" if k8.bestofk_ms <= TARGET_K8_REGEX_MS else "NOT met"
        lines.append(
            f"- CPU per request at K=8 with a regex verifier: {k8.bestofk_ms:.2f} ms "
            f"(target ≤ {TARGET_K8_REGEX_MS} ms: {met})"
        )
    if verdicts:
        worst = max(verdicts)
        met = "met" if worst <= TARGET_VERDICT_MS else "NOT met"
        lines.append(
            f"- a cheap verifier's verdict: at most {worst:.3f} ms on average per cell "
            f"(target ≤ {TARGET_VERDICT_MS} ms: {met})"
        )
    return "\n".join(lines) + "\n"


def start_servers(stack: ExitStack, logs: Path) -> tuple[Server, Server]:
    """A fake backend in ``ok`` mode and a bestofk over it, both ready; stopped with ``stack``."""
    backend = start_fake_backend(logs / "fake_backend.log")
    stack.callback(backend.stop)
    # Records off: a request's record is written off the request path, but its CPU is still
    # bestofk's; the figure is for the default server, which records nothing.
    bestofk = start_bestofk(logs / "bestofk.log", "--backend", backend.url, env=engine_env())
    stack.callback(bestofk.stop)
    bestofk.wait_ready(60)
    return bestofk, backend


def run(ks: Sequence[int], requests: int, logs: Path | None = None) -> list[CpuRow]:
    """Start the two servers, measure, stop them."""
    with ExitStack() as stack:
        directory = logs or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        bestofk, backend = start_servers(stack, directory)
        return measure(bestofk, backend, ks, requests)


def compare(
    trees: Sequence[str], rounds: int, requests: int, k: int = 8, warmup: int = 30
) -> dict[str, list[float]]:
    """CPU ms per ``/generate`` (K=``k``, one regex) of each tree, per round: ``trees`` are
    ``"NAME=SRC [FLAG...]"``, the servers take turns, ``requests`` each per round."""
    body = {"prompt": PROMPT, "k": k, "sampling": {"max_tokens": MAX_TOKENS}, "verifiers": [REGEX]}
    with ExitStack() as stack, httpx.Client(timeout=60) as client:
        logs = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        backend = start_fake_backend(logs / "fake_backend.log")
        stack.callback(backend.stop)
        servers: dict[str, Server] = {}
        for tree in trees:
            head, *flags = shlex.split(tree)
            name, _, src = head.partition("=")
            env = engine_env(PYTHONPATH=str(Path(src).resolve()))
            server = start_bestofk(logs / f"{name}.log", "--backend", backend.url, *flags, env=env)
            stack.callback(server.stop)
            servers[name] = server
        for server in servers.values():
            server.wait_ready(90)

        def sender(server: Server) -> Callable[[], httpx.Response]:
            return lambda: client.post(server.url + "/generate", json=body)

        for server in servers.values():
            _timed_loop(sender(server), warmup, [server.process.pid])
        out: dict[str, list[float]] = {name: [] for name in servers}
        for _ in range(rounds):
            for name, server in servers.items():
                (cpu,), _, _ = _timed_loop(sender(server), requests, [server.process.pid])
                out[name].append(cpu * 1000 / requests)
        return out


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m bestofk.tooling.bench.cpu``: print the table (and write it as JSON)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--requests", type=int, help="per cell (default 200); with --compare, per round (150)"
    )
    parser.add_argument("--k", default="1,8,32", help="comma-separated K values")
    parser.add_argument("--json", type=Path, help="write the rows here")
    parser.add_argument(
        "--compare", action="append", metavar='"NAME=SRC [FLAG...]"',
        help="a tree to measure beside the others (repeatable; see the module doc)",
    )  # fmt: skip
    parser.add_argument("--rounds", type=int, default=12, help="with --compare (default 12)")
    args = parser.parse_args(argv)
    if args.compare:
        figures = compare(args.compare, args.rounds, args.requests or 150)
        for name, runs in figures.items():
            print(f"{name}: median {statistics.median(runs):.2f} ms CPU per K=8 regex request "
                  f"(rounds: {' '.join(f'{r:.2f}' for r in runs)})")  # fmt: skip
        if args.json:
            args.json.write_text(json.dumps(figures, indent=2) + "\n")
        return
    rows = run([int(k) for k in args.k.split(",")], args.requests or 200)
    print(markdown(rows), end="")
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")


if __name__ == "__main__":
    main()
