"""Real server processes on loopback: bestofk servers and vLLM's OpenAI server.

Used by the tests, the soak run and ``bestofk bench``. Each server runs
in its own process group, so stopping it also stops what it spawned (vLLM's engine core).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    """A port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def engine_env(**extra: str) -> dict[str, str]:
    """Environment for a process that runs vLLM's CPU build."""
    env = dict(os.environ)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    env.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    env.update(extra)
    return env


@dataclass
class Server:
    """A running server process and where to reach it."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path
    temp: Path | None = None
    """A directory of the server's own, removed once it has stopped."""

    def log_tail(self, lines: int = 60) -> str:
        """The end of the server's log, for failure messages."""
        text = self.log.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def wait_ready(self, timeout_s: float, path: str = "/health") -> None:
        """Poll ``path`` until 200; fail with the log if the process dies or time runs out."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"server exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + path, timeout=2).status_code == 200:
                    return
            time.sleep(0.5)
        raise RuntimeError(f"server not ready after {timeout_s}s:\n{self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM the process group, then SIGKILL what is left; remove its ``temp``."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        if self.temp is not None:
            shutil.rmtree(self.temp, ignore_errors=True)


def start(
    args: Sequence[str], log: Path, env: dict[str, str], port: int, cwd: Path = ROOT
) -> Server:
    """Start ``args`` in ``cwd``, in its own process group, with output to ``log``."""
    with log.open("wb") as handle:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen(
            list(args),
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
    return Server(f"http://127.0.0.1:{port}", process, log)


def start_bestofk(
    log: Path, *args: str, env: dict[str, str] | None = None, port: int | None = None
) -> Server:
    """``bestofk serve`` on ``port`` (default: a free one) with extra CLI ``args``."""
    port = port or free_port()
    cmd = [str(VENV_BIN / "bestofk"), "serve", "--port", str(port), *args]
    return start(cmd, log, env or engine_env(), port)


def start_fake_backend(log: Path, mode: str = "ok", port: int | None = None) -> Server:
    """A :mod:`bestofk.tooling.fake_backend` process in ``mode`` on ``port`` (default: a free
    one), ready: its ``/control`` answers."""
    port = port or free_port()
    cmd = [
        sys.executable,
        "-m",
        "bestofk.tooling.fake_backend",
        "--port",
        str(port),
        "--mode",
        mode,
    ]
    fake = start(cmd, log, dict(os.environ), port)
    try:
        fake.wait_ready(30, path="/control")
    except BaseException:
        fake.stop()
        raise
    return fake


def start_vllm_openai(
    log: Path, model: str, served_name: str, *extra: str, port: int | None = None
) -> Server:
    """vLLM's own OpenAI server (``python -m``: the console script fails under vllm-cpu) on
    ``port`` (default: a free one); ``extra`` CLI arguments go last, so they override the
    defaults here."""
    port = port or free_port()
    cmd = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", model, "--served-model-name", served_name,
        "--host", "127.0.0.1", "--port", str(port),
        "--enforce-eager", "--gpu-memory-utilization", "0.3", "--max-num-seqs", "64", *extra,
    ]  # fmt: skip
    # vLLM names its ZMQ sockets in the temp directory and leaves them there when it stops (a
    # few per start); a directory of its own goes with the server, as `bestofk serve` does.
    temp = Path(tempfile.mkdtemp(prefix="vllm-serve-"))
    server = start(cmd, log, engine_env(VLLM_RPC_BASE_PATH=str(temp), TMPDIR=str(temp)), port)
    server.temp = temp
    return server


@contextlib.contextmanager
def running(server: Server, timeout_s: float) -> Iterator[Server]:
    """Wait for ``server`` and stop it afterwards."""
    try:
        server.wait_ready(timeout_s)
        yield server
    finally:
        server.stop()
