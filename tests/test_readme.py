"""The README is a test: every shell, Python and YAML example of README.md and demo/README.md
runs verbatim, and a broken one fails here.

The examples run against the session's in-process server (``server``): commands that find the
server themselves get it through ``BESTOFK_URL``, and the address the text spells out
(``127.0.0.1:8000``, ``localhost:8000``) is the only thing rewritten, to that server's. They run
in a scratch directory holding ``demo/tasks.jsonl``, the demo model and ``records/`` (the
session server's record directory), so an example that writes ``demo/eval.json`` cannot
overwrite the committed one. A block runs as one bash script, except that servers (``make
serve``, ``bestofk serve ...``, each on a line of its own) are started on a free port through
``BESTOFK_PORT`` until ``/health`` answers, then stopped: a CPU engine takes a minute or two to
load, so "answers" means 200, or 503 while the engine loads (the flags, the config, the port
and the app all passed by then). The servers start two at a time in the background as soon as
the module does, so their start-up overlaps the other examples. A YAML example must load as the
server's settings.

A block preceded by ``<!-- not tested: reason -->`` is skipped with that reason; there must be
few of those.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from bestofk.tooling.procs import ROOT, VENV_BIN, Server, engine_env, free_port

DOCS = (ROOT / "README.md", ROOT / "demo" / "README.md")
NOT_TESTED = re.compile(r"<!--\s*not tested:\s*(?P<reason>\S.*?)\s*-->")
MAX_NOT_TESTED = 7
"""make test, pip from PyPI, a model of one's own and GPU hosts, the training walk-through (a
second engine and minutes of training: tests/test_train.py runs that loop), OpenRLHF (not
installed), the 10-minute benchmark, and demo/train.py: raise it only with a reason as good."""
"""Examples the suite cannot run (GPU, remote hosts, PyPI, the 10-minute bench) must be few."""
SERVE = re.compile(
    r"""^(?:[A-Z_][A-Z0-9_]*=(?:'[^']*'|"[^"]*"|\S+)\s+)*(?:make serve|bestofk serve)\b"""
)
"""A server command, after any ``NAME=value`` environment assignments (quoted or not)."""
DEFAULT_ADDRESSES = ("127.0.0.1:8000", "localhost:8000")
COMMAND_TIMEOUT_S = 300.0
SERVE_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Example:
    """One fenced block of a doc."""

    doc: Path
    line: int
    language: str
    text: str
    not_tested: str | None

    @property
    def id(self) -> str:
        return f"{self.doc.relative_to(ROOT)}:{self.line}"


def examples(doc: Path) -> list[Example]:
    """Every fenced block of ``doc`` (fences at the start of a line), with the ``not tested``
    reason of the comment right before it, if any."""
    lines = doc.read_text().splitlines()
    found = []
    i = 0
    while i < len(lines):
        if not lines[i].startswith("```"):
            i += 1
            continue
        language = lines[i][3:].strip()
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        previous = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        marked = NOT_TESTED.search(previous)
        text = "\n".join(lines[i + 1 : end]) + "\n"
        found.append(Example(doc, i + 1, language, text, marked and marked["reason"]))
        i = end + 1
    return found


ALL = [e for doc in DOCS for e in examples(doc)]


def commands(script: str) -> list[str]:
    """A shell block's logical lines: backslash continuations joined, comments dropped."""
    out, current = [], ""
    for line in script.splitlines():
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        current += line
        if current.strip() and not current.lstrip().startswith("#"):
            out.append(current.strip())
        current = ""
    return out


def test_every_example_is_run_or_says_why_not() -> None:
    assert len(ALL) >= 10
    for example in ALL:
        assert example.language in ("bash", "python", "yaml"), (
            f"{example.id}: a fenced block needs a language this test runs (bash, python, "
            f"yaml), not {example.language!r}"
        )
    skipped = [e.id for e in ALL if e.not_tested]
    assert len(skipped) <= MAX_NOT_TESTED, f"too many untested examples: {skipped}"


def serve_commands(example: Example) -> list[str]:
    """The block's server commands (none for a block of other commands)."""
    if example.language != "bash" or example.not_tested:
        return []
    return [c for c in commands(example.text) if SERVE.match(c)]


@pytest.fixture(scope="module")
def serve_checks(workdir: Path) -> Iterator[dict[str, concurrent.futures.Future[str | None]]]:
    """Every doc's server commands, checked in the background; command → its failure or None."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        yield {
            command: pool.submit(check_serve, command, workdir)
            for example in ALL
            for command in serve_commands(example)
        }


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory, server_records: Path) -> Path:
    """A scratch checkout: what the examples read, nothing they could overwrite."""
    path = tmp_path_factory.mktemp("readme")
    (path / "demo").mkdir()
    shutil.copy(ROOT / "demo" / "tasks.jsonl", path / "demo" / "tasks.jsonl")
    (path / "demo" / "model").symlink_to(ROOT / "demo" / "model")
    (path / "records").symlink_to(server_records)
    return path


def example_env(server: Server) -> dict[str, str]:
    """The venv's tools first on PATH, the session server as the CLI's server; no keys."""
    env = engine_env(BESTOFK_URL=server.url)
    env["PATH"] = os.pathsep.join([str(VENV_BIN), env.get("PATH", "")])
    for name in ("BESTOFK_API_KEY", "OPENAI_API_KEY", "BESTOFK_CONFIG", "BESTOFK_PORT"):
        env.pop(name, None)
    return env


def on_server(text: str, server: Server) -> str:
    """``text`` with the default address the docs spell out replaced by the server's."""
    address = server.url.removeprefix("http://")
    for default in DEFAULT_ADDRESSES:
        text = text.replace(default, address)
    return text


@pytest.mark.parametrize("example", ALL, ids=[e.id for e in ALL])
def test_example(
    example: Example,
    server: Server,
    workdir: Path,
    serve_checks: dict[str, concurrent.futures.Future[str | None]],
) -> None:
    if example.not_tested:
        pytest.skip(f"marked in the doc: {example.not_tested}")
    env = example_env(server)
    if example.language == "yaml":
        check_settings(example.text, workdir)
    elif example.language == "python":
        script = workdir / f"example_{example.line}.py"
        script.write_text(on_server(example.text, server))
        run(f"{sys.executable} {script.name}", workdir, env, example)
    elif not serve_commands(example):
        out = run(on_server(example.text, server), workdir, env, example)
        if example.text.startswith("curl"):
            assert out.startswith("{") and '"error"' not in out[:200], f"{example.id}:\n{out}"
    else:
        for command in commands(example.text):
            if SERVE.match(command):
                failure = serve_checks[command].result()
                assert failure is None, f"{example.id}: {failure}"
            else:
                run(on_server(command, server), workdir, env, example)


def run(script: str, cwd: Path, env: dict[str, str], example: Example) -> str:
    """Run ``script`` with bash, stopping at the first failing command; on a timeout its whole
    process group goes, so nothing it started outlives it."""
    process = subprocess.Popen(
        ["bash", "-e", "-o", "pipefail", "-c", script], cwd=cwd, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    with stopped(process):
        try:
            stdout, stderr = process.communicate(timeout=COMMAND_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{example.id}: `{script.strip()}` ran past {COMMAND_TIMEOUT_S} s")
    assert process.returncode == 0, (
        f"{example.id}: `{script.strip()}` exited {process.returncode}\n"
        f"stdout:\n{stdout[-3000:]}\nstderr:\n{stderr[-3000:]}"
    )
    return stdout


def check_settings(text: str, workdir: Path) -> None:
    """The YAML example is a valid settings file, read the way ``--config`` reads it."""
    config = workdir / "example-config.yaml"
    config.write_text(text)
    done = subprocess.run(
        [sys.executable, "-c", "from bestofk.service.settings import Settings; Settings()"],
        env={**os.environ, "BESTOFK_CONFIG": str(config)}, capture_output=True, text=True,
        timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]


def check_serve(command: str, workdir: Path) -> str | None:
    """Start the server on a free port, wait for /health to answer, stop it; why it failed.

    ``make`` runs in the checkout (the Makefile and its venv are there), the rest in
    ``workdir``, where the log goes too."""
    cwd = ROOT if command.startswith("make") else workdir
    if command.startswith("make") and not (ROOT / ".venv" / ".installed").is_file():
        return f"`{command}` needs the venv `make install` builds in {ROOT}"
    port = free_port()
    # A server stopped while its engine loads is killed (it would finish loading first) and
    # leaves its engine temp dir behind: in a TMPDIR of its own, removed here. A short path:
    # the engine's ZMQ sockets live there, and a socket path has at most 107 characters.
    scratch = Path(tempfile.mkdtemp(prefix="bestofk-readme-"))
    env = engine_env(BESTOFK_PORT=str(port), TMPDIR=str(scratch))
    env["PATH"] = os.pathsep.join([str(VENV_BIN), env.get("PATH", "")])
    log = workdir / f"serve-{port}.log"
    with log.open("wb") as handle:
        process = subprocess.Popen(
            ["bash", "-c", command], cwd=cwd, env=env, stdout=handle, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(shutil.rmtree, scratch, ignore_errors=True)
        cleanup.enter_context(stopped(process))
        deadline = time.monotonic() + SERVE_TIMEOUT_S
        while time.monotonic() < deadline:
            if process.poll() is not None:
                output = log.read_text(errors="replace")[-3000:]
                return f"`{command}` exited {process.returncode}:\n{output}"
            with contextlib.suppress(httpx.HTTPError, ValueError):
                reply = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
                if reply.status_code == 200 or (
                    reply.status_code == 503 and reply.json().get("status") == "loading"
                ):
                    return None
            time.sleep(0.5)
        return f"`{command}`: no /health in {SERVE_TIMEOUT_S} s"


@contextlib.contextmanager
def stopped(process: subprocess.Popen[Any]) -> Iterator[None]:
    """SIGTERM the process group afterwards; SIGKILL what a loading engine keeps alive (a
    server waits for its engine to finish loading before it exits)."""
    try:
        yield
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
