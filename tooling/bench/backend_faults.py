"""Backend faults against a real bestofk over :mod:`bestofk.tooling.fake_backend` servers on
loopback.

    python -m bestofk.tooling.bench.backend_faults [--requests 200] [--concurrency 8]
        [--first-token-s 1]

Two probes, one table each:

- wedged: a backend that answers ``/v1/models`` but never sends a token, beside a healthy one.
  How many requests still reach it after its first ejection (target: none but one probe per
  cool-down), the statuses, and the latency the wedged calls cost.
- flood: a backend streaming one candidate forever (``max_tokens`` ignored): the server's RSS
  before, at its peak and after one request.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from tempfile import TemporaryDirectory

import httpx

from bestofk.tooling.procs import Server, engine_env, start_bestofk, start_fake_backend

BODY = {
    "prompt": "What is 6 x 7?",
    "k": 2,
    "sampling": {"max_tokens": 8},
    "verifiers": [{"type": "regex", "pattern": r"\d"}],
}


def bestofk(logs: Path, *backends: Server, **env: str) -> Server:
    """bestofk over ``backends``, ready."""
    args = [arg for b in backends for arg in ("--backend", b.url)]
    server = start_bestofk(logs / "bestofk.log", *args, env=engine_env(**env))
    server.wait_ready(60)
    return server


def seen(backend: Server) -> int:
    """Completion requests the fake has received."""
    return len(httpx.get(backend.url + "/control", timeout=5).json()["requests"])


def up(server: Server, backend: Server) -> float | None:
    """``bestofk_backend_up`` of ``backend``; None if the server does not export it."""
    for line in httpx.get(server.url + "/metrics", timeout=5).text.splitlines():
        if line.startswith("bestofk_backend_up{") and f'"{backend.url}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return None


def rss_mb(server: Server) -> float:
    """Resident memory of the server process."""
    for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def wedged(logs: Path, requests: int, concurrency: int, first_token_s: float) -> None:
    """Requests over a wedged and a healthy backend; who got what, and when."""
    stuck, fine = (
        start_fake_backend(logs / "wedged.log", "wedge"),
        start_fake_backend(logs / "fine.log"),
    )
    server = bestofk(
        logs, stuck, fine,
        BESTOFK_BACKEND_FIRST_TOKEN_TIMEOUT_S=str(first_token_s),
        BESTOFK_LIMITS__REQUEST_TIMEOUT_S="30",
    )  # fmt: skip
    at_ejection: list[int] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set() and not at_ejection:
            if up(server, stuck) == 0:
                at_ejection.append(seen(stuck))
            time.sleep(0.05)

    def one(_: int) -> tuple[int, float]:
        began = time.perf_counter()
        reply = httpx.post(server.url + "/generate", json=BODY, timeout=120)
        return reply.status_code, time.perf_counter() - began

    try:
        watcher = threading.Thread(target=watch)
        watcher.start()
        began = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            results = list(pool.map(one, range(requests)))
        wall = time.perf_counter() - began
        done.set()
        watcher.join()
        total = seen(stuck)
        statuses = Counter(code for code, _ in results)
        latencies = sorted(s for _, s in results)
        before = at_ejection[0] if at_ejection else total
        print(f"\nwedged backend: {requests} requests, {concurrency} at a time, {wall:.1f} s")
        print(f"{'statuses':<40} {dict(statuses)}")
        print(f"{'requests that reached the wedged one':<40} {total}")
        print(f"{'  before its first ejection':<40} {before if at_ejection else 'never ejected'}")
        print(f"{'  after it':<40} {total - before} ({(total - before) / requests:.1%})")
        p99 = latencies[int(0.99 * (len(latencies) - 1))]
        print(f"{'latency p50 / p99 / max (s)':<40} {statistics.median(latencies):.3f} / "
              f"{p99:.3f} / {latencies[-1]:.3f}")  # fmt: skip
    finally:
        for process in (server, stuck, fine):
            process.stop()


def flood(logs: Path, seconds: float) -> None:
    """One request to a backend that never ends a candidate: the server's memory."""
    backend = start_fake_backend(logs / "flood.log", "flood")
    server = bestofk(logs, backend)
    try:
        before = rss_mb(server)
        peak = before
        result: dict[str, httpx.Response] = {}
        body = {**BODY, "timeout_s": seconds}
        sender = threading.Thread(
            target=lambda: result.setdefault(
                "reply", httpx.post(server.url + "/generate", json=body, timeout=seconds + 30)
            )
        )
        began = time.perf_counter()
        sender.start()
        while sender.is_alive():
            peak = max(peak, rss_mb(server))
            time.sleep(0.1)
        took = time.perf_counter() - began
        time.sleep(1)
        reply = result["reply"]
        finish = [c["finish_reason"] for c in reply.json().get("candidates", [])]
        print(f"\nnever-ending candidate: one request, k=2, max_tokens 8, deadline {seconds:g} s")
        print(f"{'status / finish reasons / time':<40} {reply.status_code} {finish} {took:.2f} s")
        print(f"{'server RSS before / peak / after (MB)':<40} {before:.0f} / {peak:.0f} / "
              f"{rss_mb(server):.0f}")  # fmt: skip
    finally:
        server.stop()
        backend.stop()


def main() -> None:
    """Run both probes."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--first-token-s", type=float, default=1.0)
    parser.add_argument("--flood-s", type=float, default=20.0, help="the flood request's deadline")
    args = parser.parse_args()
    with TemporaryDirectory() as tmp:
        wedged(Path(tmp), args.requests, args.concurrency, args.first_token_s)
        flood(Path(tmp), args.flood_s)


if __name__ == "__main__":
    main()
