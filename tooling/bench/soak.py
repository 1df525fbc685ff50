"""Soak: many concurrent clients of mixed traffic against a bestofk over CPU vLLM, on loopback.

Starts its own bestofk (in-process vLLM over ``--model``) and runs ``--clients`` clients for
``--duration`` seconds, each looping over one kind of request:

  generate     /generate k=4 with regex or exact verifiers
  chat         /v1/chat/completions best_of=4 with a verifier in the extra fields
  chat_stream  the same, streamed (SSE), with the usage chunk
  verify       /verify of correct code with unit_tests
  hostile      /verify of hostile code (tests/test_sandbox.py's HOSTILE) with unit_tests
  bad          malformed or out-of-bounds requests (4xx expected)
  fault        deliberate faults: a deadline too short to meet (504), and clients that hang
               up mid-generation or mid-sandbox-run (their work must be cancelled)

It reports requests by kind and status and checks that nothing else failed: no 5xx outside
the deliberate faults (429/503 with Retry-After count as load shed, not failures), the service
process's RSS (the engine core is a child process, not counted) grew < 10 % from after the
warm-up to the end, no process is left under the sandbox uids, and the server's temp
directory (its TMPDIR) is empty after it exits, torch's shared compile cache aside. Exit
status 1 when a check fails.

    python -m bestofk.tooling.bench.soak [--model demo/model] [--clients 200] [--duration 120]
        [--json OUT]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from bestofk.tooling.procs import ROOT, Server, engine_env, free_port, start_bestofk
from bestofk.tooling.sandbox_corpus import BENIGN, HOSTILE, SPECS
from bestofk.tooling.sandbox_corpus import hostile as hostile_code
from bestofk.verifiers.sandbox.process import uid_processes

PROMPT = "What's the factorial of 5? (Respond with a number only)"
ROLES = {"generate": 60, "chat": 40, "chat_stream": 40, "verify": 12, "hostile": 16,
         "bad": 20, "fault": 12}  # fmt: skip
"""Clients per kind, out of 200 (scaled to ``--clients``)."""
MAX_REQUESTS = 1_000_000
"""A hard bound on the whole run besides its duration."""
WARMUP_S = 15.0
"""RSS growth is measured from here: caches and pools fill up during the first requests."""
BAD_PAUSE_S = 0.2
"""Bad requests are answered at once; without a pause they would crowd out the rest."""
SAMPLING = {"max_tokens": 16, "temperature": 1.0}
TORCH_CACHE = "torchinductor_"


def default_model() -> str:
    """The bundled demo model, else the dev model the project's helpers train."""
    demo = ROOT / "demo" / "model"
    return str(demo if (demo / "config.json").is_file() else Path("/tmp/devmodel/model"))


class Soak:
    """The server, the traffic and the tally."""

    def __init__(self, server: Server, host: dict[str, Any], deadline: float) -> None:
        self.server = server
        self.host = host
        self.deadline = deadline
        self.sent = 0
        self.results: Counter[tuple[str, str]] = Counter()
        self.failures: list[str] = []
        self.hostile_names = itertools.cycle(sorted(HOSTILE))
        self.bad_requests = itertools.cycle(_bad_requests())

    def record(self, kind: str, outcome: str, ok: bool, why: str = "") -> None:
        """Count one answer; keep the first few unexpected ones to show."""
        self.results[(kind, outcome)] += 1
        if not ok and len(self.failures) < 30:
            self.failures.append(f"{kind}: {outcome} {why[:300]}")

    async def client(self, http: httpx.AsyncClient, kind: str) -> None:
        """One client: the same kind of request, again and again, until time is up."""
        send: Callable[[httpx.AsyncClient], Awaitable[None]] = getattr(self, kind)
        while time.monotonic() < self.deadline and self.sent < MAX_REQUESTS:
            self.sent += 1
            try:
                await send(http)
            except httpx.HTTPError as exc:  # a dropped connection is a failure too
                at = f"at {time.monotonic() - self.deadline:+.1f}s from the end: "
                self.record(kind, type(exc).__name__, False, at + repr(exc.__context__))

    def judge(self, kind: str, reply: httpx.Response, expect: str = "ok") -> None:
        """Classify a reply: ok, a 4xx, load shed (429/503 + Retry-After) or a 5xx."""
        status = reply.status_code
        if status < 300:
            self.record(kind, str(status), expect == "ok", reply.text)
        elif status < 500 and status != 429:
            self.record(kind, str(status), expect == "4xx", reply.text)
        elif status in (429, 503) and "retry-after" in reply.headers:
            self.record(kind, f"{status} shed", True)
        else:
            self.record(kind, str(status), expect == str(status), reply.text)

    async def generate(self, http: httpx.AsyncClient) -> None:
        """/generate with a regex or an exact verifier."""
        verifier = random.choice(
            [{"type": "regex", "pattern": r"^\d+$", "mode": "fullmatch"},
             {"type": "exact", "reference": "120"}]
        )  # fmt: skip
        body = {"prompt": PROMPT, "k": 4, "sampling": SAMPLING, "verifiers": [verifier]}
        self.judge("generate", await http.post("/generate", json=body))

    def _chat(self, stream: bool) -> dict[str, Any]:
        return {
            "model": "demo",
            "messages": [{"role": "user", "content": PROMPT}],
            "max_tokens": 16,
            "best_of": 4,
            "verifiers": [{"type": "regex", "pattern": r"\d"}],
            "stream": stream,
            **({"stream_options": {"include_usage": True}} if stream else {}),
        }

    async def chat(self, http: httpx.AsyncClient) -> None:
        """A non-streamed chat completion."""
        self.judge("chat", await http.post("/v1/chat/completions", json=self._chat(False)))

    async def chat_stream(self, http: httpx.AsyncClient) -> None:
        """A streamed chat completion: every event must parse and it must end in [DONE]."""
        async with http.stream("POST", "/v1/chat/completions", json=self._chat(True)) as reply:
            if reply.status_code != 200:
                await reply.aread()
                self.judge("chat_stream", reply)
                return
            events = [line[5:].strip() async for line in reply.aiter_lines()
                      if line.startswith("data:")]  # fmt: skip
        if not events or events[-1] != "[DONE]":
            self.record("chat_stream", "no [DONE]", False, str(events[-3:]))
            return
        for event in events[:-1]:
            error = json.loads(event).get("error")
            if error is not None:  # the status line had gone out: errors come as events
                code = int(error.get("code") or 500)
                shed = code in (429, 503)
                self.record("chat_stream", f"{code} in stream", shed, str(error))
                return
        self.record("chat_stream", "200", True)

    async def verify(self, http: httpx.AsyncClient) -> None:
        """/verify of code that passes."""
        mode = random.choice(sorted(SPECS))
        # A budget that a loaded machine still meets: a timeout here would be no bug.
        body = _verify_body(mode, BENIGN[mode], timeout_s=5.0)
        reply = await http.post("/verify", json=body)
        self.judge("verify", reply)
        if reply.status_code == 200 and not reply.json()["passed"]:
            verdict = reply.json()["candidates"][0]["verdicts"][0]
            self.record("verify", "benign code failed", False, f"{mode}: {verdict}")

    async def hostile(self, http: httpx.AsyncClient) -> None:
        """/verify of hostile code: it must fail, and the request must still be answered."""
        name = next(self.hostile_names)
        mode, code = hostile_code(name, self.host)
        reply = await http.post("/verify", json=_verify_body(mode, code))
        self.judge("hostile", reply)
        if reply.status_code == 200 and reply.json()["passed"]:
            self.record("hostile", f"{name} passed", False)

    async def bad(self, http: httpx.AsyncClient) -> None:
        """A malformed or out-of-bounds request: a 4xx is the right answer."""
        path, content = next(self.bad_requests)
        reply = await http.post(path, content=content,
                                headers={"content-type": "application/json"})  # fmt: skip
        self.judge("bad", reply, expect="4xx")
        await asyncio.sleep(BAD_PAUSE_S)

    async def fault(self, http: httpx.AsyncClient) -> None:
        """A deliberate fault: a deadline that cannot be met, or a client that hangs up."""
        which = random.choice(["deadline", "hang_up_generation", "hang_up_sandbox"])
        if which == "deadline":
            body = {"prompt": PROMPT, "k": 4, "sampling": SAMPLING, "timeout_s": 0.001}
            self.judge("fault", await http.post("/generate", json=body), expect="504")
            return
        if which == "hang_up_generation":
            body = {"prompt": "Tell me a long story.", "k": 8,
                    "sampling": {"max_tokens": 400, "min_tokens": 400}}  # fmt: skip
            path = "/generate"
        else:
            spin = "def solve(x):\n    while True:\n        pass\n"
            body = _verify_body("cases", spin, timeout_s=10.0)
            path = "/verify"
        try:
            reply = await http.post(path, json=body, timeout=httpx.Timeout(30, read=0.5))
        except httpx.ReadTimeout:
            self.record("fault", "hung up", True)
        else:
            self.judge("fault", reply)


def _verify_body(mode: str, code: str, timeout_s: float | None = None) -> dict[str, Any]:
    spec = {"type": "unit_tests", **SPECS[mode]}
    if timeout_s is not None:
        spec["timeout_s"] = timeout_s
    return {"prompt": "square x", "candidates": [f"```python\n{code}\n```"], "verifiers": [spec]}


def _bad_requests() -> list[tuple[str, bytes]]:
    """(path, body) pairs that must each get a 4xx."""
    bodies: list[tuple[str, Any]] = [
        ("/generate", {"k": 2}),
        ("/generate", {"prompt": "x", "k": 10_000}),
        ("/generate", {"prompt": "x", "verifiers": [{"type": "nope"}]}),
        ("/generate", {"prompt": "x", "verifiers": [{"type": "regex", "pattern": "(["}]}),
        ("/generate", {"prompt": "x", "sampling": {"max_tokens": 10**9}}),
        ("/verify", {"candidates": []}),
        ("/verify", {"candidates": ["x"], "verifiers": [
            {"type": "unit_tests", "tests": "def test_a():\n    x = " + "-" * 50_000 + "1\n"}]}),
        ("/v1/chat/completions", {"model": "gpt-17", "messages": [{"role": "user"}]}),
        ("/v1/completions", {"model": "demo", "prompt": "x", "n": 5, "best_of": 2}),
        ("/nowhere", {}),
    ]  # fmt: skip
    raw = [(path, json.dumps(body).encode()) for path, body in bodies]
    raw.append(("/generate", b'{"prompt": "x",'))  # not JSON
    raw.append(("/generate", b"[" * 50_000 + b"]" * 50_000))  # nested past the parser
    raw.append(("/verify", json.dumps({"candidates": ["x" * (5 << 20)]}).encode()))  # 413
    return raw


def rss_bytes(pid: int) -> int:
    """Resident memory of one process (its children not included)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def slot_uids(pid: int) -> list[int]:
    """The sandbox uids the server claimed (it holds a lock file named after each)."""
    uids = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = Path(os.readlink(fd))
            if target.parent.name == "bestofk-sandbox-uids" and target.suffix == ".lock":
                uids.append(int(target.stem))
    return sorted(uids)


def cpu_ticks(uids: list[int]) -> int:
    """CPU time so far of every live process running as one of ``uids``."""
    total = 0
    for pid in (p for uid in uids for p in uid_processes(uid)):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total


def make_host(pid: int) -> dict[str, Any]:
    """What the hostile candidates aim at: files, a port, the service's pid."""
    root = Path(tempfile.mkdtemp(prefix="bestofk-soak-host-"))
    root.chmod(0o755)
    (root / "root-only.txt").write_text("soak secret")
    (root / "root-only.txt").chmod(0o600)
    (root / "victim.txt").write_text("keep me")
    return {"root": root, "secret_file": root / "root-only.txt", "victim": root / "victim.txt",
            "port": free_port(), "pid": pid}  # fmt: skip


async def run(ns: argparse.Namespace, server: Server) -> dict[str, Any]:
    """Warm up, drive the clients, sample RSS; returns the figures."""
    pid = server.process.pid
    host = make_host(pid)
    scale = ns.clients / sum(ROLES.values())
    kinds = [kind for kind, n in ROLES.items() for _ in range(max(1, round(n * scale)))]
    limits = httpx.Limits(max_connections=len(kinds) + 16, max_keepalive_connections=len(kinds))
    rss: dict[str, int] = {"idle": rss_bytes(pid)}
    async with httpx.AsyncClient(base_url=server.url, timeout=120, limits=limits) as http:
        await http.post("/generate", json={"prompt": PROMPT, "k": 4, "sampling": SAMPLING})
        start = time.monotonic()
        soak = Soak(server, host, start + ns.duration)
        clients = [asyncio.create_task(soak.client(http, kind)) for kind in kinds]
        samples: list[tuple[float, int]] = []
        while not all(c.done() for c in clients):
            await asyncio.sleep(5)
            samples.append((time.monotonic() - start, rss_bytes(pid)))
        await asyncio.gather(*clients)
        elapsed = time.monotonic() - start
    after_warmup = next((r for t, r in samples if t >= WARMUP_S), samples[0][1])
    rss.update(after_warmup=after_warmup, peak=max(r for _, r in samples), end=samples[-1][1])
    victim_ok = host["victim"].read_text() == "keep me"
    shutil.rmtree(host["root"])
    return {"clients": len(kinds), "kinds": dict(Counter(kinds)), "seconds": round(elapsed, 1),
            "requests": soak.sent, "results": soak.results, "failures": soak.failures,
            "rss": rss, "victim_untouched": victim_ok}  # fmt: skip


def main() -> None:
    """Start the server, soak it, stop it, check what is left, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=default_model())
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--duration", type=float, default=120.0)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    ns = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bestofk-soak-"))
    tmpdir = work / "server-tmp"
    tmpdir.mkdir()
    # A private temp dir, to check it is empty afterwards.
    env = engine_env(BESTOFK_SERVED_MODEL_NAME="demo", TMPDIR=str(tmpdir))
    server = start_bestofk(work / "server.log", "--model", ns.model, env=env)
    try:
        server.wait_ready(600)
        uids = slot_uids(server.process.pid)
        figures = asyncio.run(run(ns, server))
        time.sleep(3)  # abandoned work winds down
        before = cpu_ticks(uids)
        time.sleep(1)
        busy_ticks = cpu_ticks(uids) - before
        os.kill(server.process.pid, signal.SIGTERM)  # the service alone: it stops its engine
        exit_code = server.process.wait(timeout=60)
    finally:
        server.stop()
    time.sleep(2)  # orphans are reaped by PID 1 a moment later
    leftover = {uid: uid_processes(uid) for uid in uids if uid_processes(uid)}
    # Torch's compile cache (kernels, precompiled headers) is kept in the temp dir on
    # purpose, shared by every later run on the machine: not a leftover of this one.
    temp_all = sorted(str(p.relative_to(tmpdir)) for p in tmpdir.rglob("*"))
    torch_cache = [p for p in temp_all if p.startswith(TORCH_CACHE)]
    temp_left = [p for p in temp_all if not p.startswith(TORCH_CACHE)]
    results: Counter[tuple[str, str]] = figures.pop("results")
    rss = figures["rss"]
    growth = rss["end"] / rss["after_warmup"] - 1
    unexpected = figures["failures"]
    checks = {
        "no unexpected errors (5xx outside deliberate faults, dropped connections, wrong 4xx)":
            not unexpected,
        "RSS growth after warm-up < 10%": growth < 0.10,
        "sandbox uids idle after the load": busy_ticks < 10,
        "no process left under the sandbox uids after exit": not leftover,
        "server temp dir empty after exit": not temp_left,
        "server exited 0 on SIGTERM": exit_code == 0,
        "hostile code left the host untouched": figures["victim_untouched"],
    }  # fmt: skip
    by_status: Counter[str] = Counter()
    for (_, outcome), n in results.items():
        by_status[outcome] += n
    report = {
        **figures,
        "by_status": dict(by_status.most_common()),
        "by_kind": {f"{kind} {outcome}": n for (kind, outcome), n in sorted(results.items())},
        "rss_mib": {k: round(v / 2**20, 1) for k, v in rss.items()},
        "rss_growth_after_warmup": f"{growth:+.1%}",
        "sandbox_uids": uids,
        "leftover_processes": leftover,
        "leftover_temp_files": temp_left[:20],
        "torch_compile_cache_files": len(torch_cache),
        "exit_code": exit_code,
        "checks": checks,
        "log": str(work / "server.log"),
    }
    del report["rss"]
    text = json.dumps(report, indent=2, default=str)
    print(text)
    if ns.json is not None:
        ns.json.write_text(text + "\n")
    sys.exit(0 if all(checks.values()) else 1)


if __name__ == "__main__":
    main()
