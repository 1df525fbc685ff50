"""``python -m bestofk.tooling.bench.pinger URL``: time ``GET URL`` back to back until SIGTERM.

Runs in its own process so the benchmark's load generator (busy parsing responses) cannot
delay the probe and be mistaken for a blocked server loop. Prints JSON on exit: the latencies
(ms), the answers other than 200 by status, and how late each pause between probes ended.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from types import FrameType

import httpx

INTERVAL_S = 0.02
"""Pause between probes: often enough for a p99, light enough not to load the server."""


def main() -> None:
    """Probe until SIGTERM, then print the latencies."""
    url = sys.argv[1]
    stop = False

    def on_term(signum: int, frame: FrameType | None) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    latencies: list[float] = []
    failures: dict[str, int] = {}
    overshoot: list[float] = []
    with httpx.Client(timeout=30) as client:
        while not stop:
            start = time.perf_counter()
            try:
                status = str(client.get(url).status_code)
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            # Every answer counts for latency: a 503 says as much about the loop as a 200.
            latencies.append((time.perf_counter() - start) * 1000)
            if status != "200":
                failures[status] = failures.get(status, 0) + 1
            slept = time.perf_counter()
            time.sleep(INTERVAL_S)
            # How late the sleep returns is this process's own wait for a core: the share of a
            # probe's latency that a busy machine, not the server, adds.
            overshoot.append((time.perf_counter() - slept - INTERVAL_S) * 1000)
    print(json.dumps({"latencies_ms": latencies, "failures": failures, "overshoot_ms": overshoot}))


if __name__ == "__main__":
    main()
