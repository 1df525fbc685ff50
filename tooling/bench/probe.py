"""An operator's probe: hostile inputs and faults against a running bestofk, one table.

Each probe runs alone while a thread polls ``/health`` every 20 ms; the table gives its input,
the statuses it got, its wall time, the server's RSS before and after (``/metrics``
``process_resident_memory_bytes``; "-" under several workers, which have no single RSS) and the
p99 of ``/health`` during it. What a healthy server answers is in each probe's ``expect``.

  baseline          nothing: /health alone, for comparison (a busy machine shows here)
  schema_bomb       /verify, a 1.4 KB JSON Schema whose anyOf doubles at each of 20 levels
  big_candidates    /verify, 64 candidates of 60 KB JSON arrays (valid, within limits)
  extract_runaway   /verify, vote policy with extract (a|aa)+$ on "a"*30+"!"
  regex_runaway     /verify, 64 candidates against the regex ^(a|a)*$
  huge_body         5 MB POST with urllib (no Expect: 100-continue)
  seeded_burst      64 concurrent /generate, k=8, ~420-token prompt, max_tokens 48, seeded
  stream_overload   --overload concurrent streamed chat completions (admission before 200?)
  temperature_0     chat completion at temperature 0, best_of 4
  huge_max_tokens   /generate with max_tokens 1e6
  unknown_model     chat completion naming a model the server does not serve
  kill_engine       (--engine-pid) SIGKILL the engine process, time until /health is 200 again
  sigterm           (--server-pid) 16 requests in flight, then SIGTERM: the statuses they get

    python -m bestofk.tooling.bench.probe --url http://127.0.0.1:8000 [--api-key KEY]
        [--only NAME ...] [--engine-pid PID] [--server-pid PID] [--overload 400] [--json OUT]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

BOMB_LEVELS = 20
PROMPT_420 = "Count the apples in the basket, then the pears, then the plums. " * 14
"""About 420 tokens for the demo model's byte-level BPE (the probe prints what it got)."""
HEALTH_EVERY_S = 0.02
BASELINE_S = 3.0


@dataclass
class Outcome:
    """One probe's row."""

    name: str
    expect: str
    status: str = ""
    latency_s: float = 0.0
    rss_before: int | None = None
    rss_after: int | None = None
    health_p99_ms: float | None = None
    health_max_ms: float | None = None
    detail: str = ""
    statuses: dict[str, int] = field(default_factory=dict)


@dataclass
class Probe:
    """Something hostile to send; ``run`` returns the statuses seen and a detail."""

    name: str
    expect: str
    run: Callable[[Client], Awaitable[tuple[Counter[str], str]]]


class Client:
    """The server under probe."""

    def __init__(self, url: str, api_key: str | None, timeout_s: float) -> None:
        self.url = url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.AsyncClient(
            base_url=self.url,
            headers=self.headers,
            timeout=timeout_s,
            limits=httpx.Limits(max_connections=1000, max_keepalive_connections=100),
        )

    async def post(self, path: str, body: Any) -> httpx.Response:
        """POST JSON."""
        return await self.http.post(path, json=body)

    def rss(self) -> int | None:
        """``process_resident_memory_bytes`` from /metrics (None when absent)."""
        try:
            text = httpx.get(self.url + "/metrics", headers=self.headers, timeout=10).text
        except httpx.HTTPError:
            return None
        for line in text.splitlines():
            if line.startswith("process_resident_memory_bytes "):
                return int(float(line.split()[1]))
        return None


class HealthPoller:
    """GET /health every 20 ms on a thread of its own (the probe's own loop may be busy)."""

    def __init__(self, url: str) -> None:
        self._url = url + "/health"
        self._stop = threading.Event()
        self.latencies: list[float] = []
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> HealthPoller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _poll(self) -> None:
        with httpx.Client(timeout=60) as client:
            while not self._stop.is_set():
                start = time.perf_counter()
                try:
                    client.get(self._url)
                except httpx.HTTPError:
                    pass  # a refused connection (draining) is no latency
                else:
                    self.latencies.append(time.perf_counter() - start)
                self._stop.wait(HEALTH_EVERY_S)

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile of the latencies, in ms."""
        if len(self.latencies) < 2:
            return self.latencies[0] * 1000 if self.latencies else None
        return (
            statistics.quantiles(self.latencies, n=100, method="inclusive")[round(q * 100) - 1]
            * 1000
        )


# --- the probes ----------------------------------------------------------------------------


def schema_bomb(levels: int = BOMB_LEVELS) -> dict[str, Any]:
    """A schema whose anyOf doubles at each level: 2**levels ways to fail."""
    defs: dict[str, Any] = {
        f"l{i}": {"anyOf": [{"$ref": f"#/$defs/l{i + 1}"}, {"$ref": f"#/$defs/l{i + 1}"}]}
        for i in range(levels)
    }
    defs[f"l{levels}"] = {"type": "string"}
    return {"$defs": defs, "$ref": "#/$defs/l0"}


def json_array(chars: int = 60_000) -> str:
    """A JSON array of integers, ``chars`` long."""
    items = json.dumps(list(range(chars // 6)))
    return items[: items.rfind(",", 0, chars - 1)] + "]"


def summary(replies: list[httpx.Response | BaseException]) -> Counter[str]:
    """Statuses, with transport errors by their class name."""
    return Counter(
        str(r.status_code) if isinstance(r, httpx.Response) else type(r).__name__ for r in replies
    )


def first_error(replies: list[httpx.Response | BaseException]) -> str:
    """The first error message among the replies, for the detail column."""
    for reply in replies:
        if isinstance(reply, BaseException):
            return f"{type(reply).__name__}: {reply}"[:100]
        if reply.status_code >= 400:
            try:
                return str(reply.json()["error"]["message"])[:100]
            except (ValueError, KeyError, TypeError):
                return reply.text[:100]
    return ""


def verdict_errors(reply: httpx.Response) -> str:
    """How many candidates got an error verdict, and the first error."""
    if reply.status_code != 200:
        return first_error([reply])
    errors = [v["error"] for c in reply.json()["candidates"] for v in c["verdicts"] if v["error"]]
    return f"{len(errors)} error verdicts" + (f": {errors[0][:70]}" if errors else "")


async def one(client: Client, path: str, body: Any) -> tuple[Counter[str], str]:
    """One request: its status, and the verdict errors or the error message."""
    try:
        reply = await client.post(path, body)
    except httpx.HTTPError as exc:
        return Counter({type(exc).__name__: 1}), str(exc)[:100]
    return summary([reply]), verdict_errors(reply) if path == "/verify" else first_error([reply])


async def many(
    client: Client, path: str, bodies: list[Any]
) -> list[httpx.Response | BaseException]:
    """Concurrent requests; transport errors come back as exceptions."""
    return await asyncio.gather(*(client.post(path, b) for b in bodies), return_exceptions=True)


async def probe_baseline(client: Client) -> tuple[Counter[str], str]:
    await asyncio.sleep(BASELINE_S)
    reply = await client.http.get("/health")
    return Counter({str(reply.status_code): 1}), f"{BASELINE_S:g}s of /health alone"


async def probe_schema_bomb(client: Client) -> tuple[Counter[str], str]:
    body = {"candidates": ["1"], "verifiers": [{"type": "json_schema", "schema": schema_bomb()}],
            "timeout_s": 30}  # fmt: skip
    return await one(client, "/verify", body)


async def probe_big_candidates(client: Client) -> tuple[Counter[str], str]:
    integers = {"type": "array", "items": {"type": "integer"}}
    body = {"candidates": [json_array()] * 64,
            "verifiers": [{"type": "json_schema", "schema": integers}]}  # fmt: skip
    return await one(client, "/verify", body)


async def probe_extract_runaway(client: Client) -> tuple[Counter[str], str]:
    body = {"candidates": ["a" * 30 + "!"], "selection": {"policy": "vote", "extract": "(a|aa)+$"}}
    return await one(client, "/verify", body)


async def probe_regex_runaway(client: Client) -> tuple[Counter[str], str]:
    body = {"candidates": ["a" * 60 + "!"] * 64,
            "verifiers": [{"type": "regex", "pattern": "^(a|a)*$"}]}  # fmt: skip
    return await one(client, "/verify", body)


async def probe_huge_body(client: Client) -> tuple[Counter[str], str]:
    body = json.dumps({"candidates": ["x" * (5 << 20)]}).encode()

    def send() -> tuple[Counter[str], str]:
        request = urllib.request.Request(
            client.url + "/verify",
            data=body,
            headers={"Content-Type": "application/json", **client.headers},
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as reply:
                return Counter({str(reply.status): 1}), ""
        except urllib.error.HTTPError as exc:
            return Counter({str(exc.code): 1}), exc.read(200).decode(errors="replace")
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            return Counter({type(reason).__name__: 1}), str(reason)[:100]

    return await asyncio.to_thread(send)


async def probe_seeded_burst(client: Client) -> tuple[Counter[str], str]:
    body = {"prompt": PROMPT_420, "k": 8, "sampling": {"max_tokens": 48, "seed": 1234}}
    replies = await many(client, "/generate", [body] * 64)
    tokens = next(
        (r.json()["usage"]["prompt_tokens"] for r in replies
         if isinstance(r, httpx.Response) and r.status_code == 200),
        None,
    )  # fmt: skip
    texts = {
        tuple(c["text"] for c in r.json()["candidates"])
        for r in replies
        if isinstance(r, httpx.Response) and r.status_code == 200
    }
    detail = f"prompt_tokens={tokens}, {len(texts)} distinct candidate sets (same seed: 1)"
    return summary(replies), detail + (f"; {first_error(replies)}" if first_error(replies) else "")


async def probe_stream_overload(client: Client, streams: int) -> tuple[Counter[str], str]:
    body = {"model": await model_name(client), "stream": True, "best_of": 2, "max_tokens": 8,
            "messages": [{"role": "user", "content": "What is 6 x 7?"}]}  # fmt: skip

    async def stream() -> str:
        try:
            async with client.http.stream("POST", "/v1/chat/completions", json=body) as reply:
                text = (await reply.aread()).decode(errors="replace")
                if reply.status_code == 200 and '"error"' in text:
                    return "200+SSE error"
                return str(reply.status_code)
        except httpx.HTTPError as exc:
            return type(exc).__name__

    seen = Counter(await asyncio.gather(*(stream() for _ in range(streams))))
    return seen, "a healthy server refuses with 429/503 before a 200 starts"


async def probe_temperature_0(client: Client) -> tuple[Counter[str], str]:
    body = {"model": await model_name(client), "temperature": 0, "best_of": 4, "max_tokens": 16,
            "messages": [{"role": "user", "content": "What is 6 x 7?"}]}  # fmt: skip
    return await one(client, "/v1/chat/completions", body)


async def probe_huge_max_tokens(client: Client) -> tuple[Counter[str], str]:
    body = {"prompt": "What is 6 x 7?", "k": 2, "sampling": {"max_tokens": 1_000_000}}
    return await one(client, "/generate", body)


async def probe_unknown_model(client: Client) -> tuple[Counter[str], str]:
    body = {"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]}
    return await one(client, "/v1/chat/completions", body)


async def probe_kill_engine(client: Client, pid: int) -> tuple[Counter[str], str]:
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    body = {"prompt": "What is 6 x 7?", "k": 2, "sampling": {"max_tokens": 8}}
    seen: Counter[str] = Counter()
    while time.monotonic() - killed < 300:
        try:
            reply = await client.post("/generate", body)
            seen[str(reply.status_code)] += 1
            if reply.status_code == 200:
                return seen, f"serving again {time.monotonic() - killed:.1f}s after the kill"
        except httpx.HTTPError as exc:
            seen[type(exc).__name__] += 1
        await asyncio.sleep(0.5)
    return seen, "not serving 300s after the kill"


async def probe_sigterm(client: Client, pid: int) -> tuple[Counter[str], str]:
    body = {"prompt": PROMPT_420, "k": 8, "sampling": {"max_tokens": 48}}
    requests = asyncio.gather(*(client.post("/generate", body) for _ in range(16)),
                              return_exceptions=True)  # fmt: skip
    await asyncio.sleep(1.0)  # in flight now
    os.kill(pid, signal.SIGTERM)
    replies = await requests
    retry = [r.headers.get("retry-after") for r in replies if isinstance(r, httpx.Response)]
    return summary(replies), f"Retry-After on {sum(r is not None for r in retry)} replies"


async def model_name(client: Client) -> str:
    """The first model the server lists."""
    reply = await client.http.get("/v1/models")
    return str(reply.json()["data"][0]["id"])


def probes(args: argparse.Namespace) -> list[Probe]:
    """Every probe the arguments allow, in table order."""
    found = [
        Probe("baseline", "200; /health p99 of the idle server", probe_baseline),
        Probe("schema_bomb", "error verdict or 504 in seconds; RSS +<200 MB", probe_schema_bomb),
        Probe("big_candidates", "200, all pass; /health p99 <= 50 ms", probe_big_candidates),
        Probe("extract_runaway", "400 selection.extract", probe_extract_runaway),
        Probe("regex_runaway", "200, 64 error verdicts", probe_regex_runaway),
        Probe("huge_body", "413", probe_huge_body),
        Probe("seeded_burst", "200 x64, 1 distinct set", probe_seeded_burst),
        Probe(
            "stream_overload",
            "200 or 429/503, never 200+SSE error",
            lambda c: probe_stream_overload(c, args.overload),
        ),
        Probe("temperature_0", "200", probe_temperature_0),
        Probe("huge_max_tokens", "400 max_tokens", probe_huge_max_tokens),
        Probe("unknown_model", "404", probe_unknown_model),
    ]
    if args.engine_pid:
        found.append(Probe("kill_engine", "503 + Retry-After, then 200",
                           lambda c: probe_kill_engine(c, args.engine_pid)))  # fmt: skip
    if args.server_pid:
        found.append(Probe("sigterm", "200 or 503 + Retry-After, never 499",
                           lambda c: probe_sigterm(c, args.server_pid)))  # fmt: skip
    return [p for p in found if not args.only or p.name in args.only]


async def run_probe(client: Client, probe: Probe, settle_s: float) -> Outcome:
    """One probe with /health polled around it and RSS read before and after."""
    outcome = Outcome(probe.name, probe.expect, rss_before=client.rss())
    with HealthPoller(client.url) as health:
        start = time.perf_counter()
        try:
            seen, outcome.detail = await probe.run(client)
        except Exception as exc:  # a probe that breaks is a row, not a crash
            seen, outcome.detail = Counter({"probe error": 1}), f"{type(exc).__name__}: {exc}"
        outcome.latency_s = time.perf_counter() - start
    outcome.statuses = dict(seen)
    outcome.status = " ".join(f"{s} x{n}" if n > 1 else s for s, n in sorted(seen.items()))
    outcome.health_p99_ms = health.quantile(0.99)
    outcome.health_max_ms = max(health.latencies, default=0) * 1000 or None
    await asyncio.sleep(settle_s)  # what a request leaves behind shows after it is answered
    outcome.rss_after = client.rss()
    return outcome


def table(outcomes: list[Outcome]) -> Table:
    """The rich table of outcomes."""
    out = Table(title="bestofk probe")
    for column in ("input", "status", "latency", "RSS before", "RSS after", "/health p99",
                   "expect", "detail"):  # fmt: skip
        out.add_column(column, overflow="fold")

    def mib(value: int | None) -> str:
        return "-" if value is None else f"{value / 2**20:.0f} MiB"

    for o in outcomes:
        p99 = "-" if o.health_p99_ms is None else f"{o.health_p99_ms:.1f} ms"
        p99 += "" if o.health_max_ms is None else f" (max {o.health_max_ms:.0f})"
        out.add_row(o.name, o.status, f"{o.latency_s:.2f} s", mib(o.rss_before),
                    mib(o.rss_after), p99, o.expect, o.detail)  # fmt: skip
    return out


async def main_async(args: argparse.Namespace) -> list[Outcome]:
    client = Client(args.url, args.api_key, args.timeout)
    try:
        return [await run_probe(client, probe, args.settle) for probe in probes(args)]
    finally:
        await client.http.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--api-key")
    parser.add_argument("--only", nargs="+", help="probe names to run (default: all)")
    parser.add_argument("--engine-pid", type=int, help="engine process to SIGKILL")
    parser.add_argument("--server-pid", type=int, help="server process to SIGTERM (last)")
    parser.add_argument("--overload", type=int, default=400, help="streams for stream_overload")
    parser.add_argument("--timeout", type=float, default=300.0, help="per request, seconds")
    parser.add_argument("--settle", type=float, default=1.0, help="seconds before RSS after")
    parser.add_argument("--json", type=Path, help="also write the outcomes here")
    args = parser.parse_args()
    outcomes = asyncio.run(main_async(args))
    # Piped (a log, CI), rich would fold the table into 80 columns.
    Console(width=None if sys.stdout.isatty() else 200).print(table(outcomes))
    if args.json:
        args.json.write_text(json.dumps([asdict(o) for o in outcomes], indent=2))


if __name__ == "__main__":
    main()
