"""A third-party verifier package, installed into the venv, used by `type` and in a profile.

``tests/plugin_example`` is a separate distribution whose entry point in ``bestofk.verifiers``
adds the type ``keywords``. It is installed for this module only (from a copy, so no build
files land in the tree) and uninstalled afterwards; servers read entry points at start-up, so
the server here starts after the install.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bestofk.tooling.procs import ROOT, Server, engine_env, start_bestofk
from tests.conftest import post

PLUGIN = ROOT / "tests" / "plugin_example"
DIST = "bestofk-plugin-example"


def pip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pip", *args], capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def plugin_installed(
    vllm_backend: Server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    """Installed after the session's servers start (``vllm_backend`` starts them)."""
    if pip("--version").returncode != 0:
        pytest.fail("pip is missing from the test venv; install it: python -m ensurepip")
    source = tmp_path_factory.mktemp("plugin") / "plugin_example"
    shutil.copytree(PLUGIN, source)
    # No build isolation: the venv's setuptools builds it, so no index is needed.
    result = pip("install", "--no-deps", "--no-build-isolation", "--no-index", str(source))
    if result.returncode != 0:
        pytest.fail(f"could not install the example plugin:\n{result.stdout}\n{result.stderr}")
    try:
        yield
    finally:
        pip("uninstall", "--yes", DIST)


@pytest.fixture(scope="module")
def plugin_server(
    plugin_installed: None, vllm_backend: Server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """A fresh bestofk (remote engine, so no model load) started after the install."""
    tmp = tmp_path_factory.mktemp("plugin-server")
    config = tmp / "config.yaml"
    config.write_text(
        "served_model_name: demo\n"
        "profiles:\n"
        "  factorial-words:\n"
        "    verifiers:\n"
        "      - {type: keywords, words: [answer, '120']}\n"
    )
    server = start_bestofk(
        tmp / "bestofk.log",
        "--backend",
        vllm_backend.url,
        env=engine_env(BESTOFK_CONFIG=str(config)),
    )
    try:
        server.wait_ready(60)
        yield server
    finally:
        server.stop()


CANDIDATES = ["120", "The answer is 120", "The answer is 24"]


def test_plugin_type_in_a_request(plugin_server: Server) -> None:
    body = {
        "prompt": "What's the factorial of 5?",
        "candidates": CANDIDATES,
        "verifiers": [{"type": "keywords", "words": ["answer", "120"]}],
    }
    response = post(plugin_server, "/verify", body)
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["text"] == "The answer is 120"
    assert [c["verdicts"][0]["score"] for c in result["candidates"]] == [0.5, 1.0, 0.5]
    assert result["candidates"][1]["verdicts"][0]["verifier"] == "keywords"


def test_plugin_type_in_a_profile(plugin_server: Server) -> None:
    body = {"prompt": "q", "candidates": CANDIDATES, "profile": "factorial-words"}
    response = post(plugin_server, "/verify", body)
    assert response.status_code == 200, response.text
    assert response.json()["index"] == 1


def test_plugin_spec_is_validated_by_its_own_model(plugin_server: Server) -> None:
    body = {"prompt": "q", "candidates": ["a"], "verifiers": [{"type": "keywords", "words": []}]}
    response = post(plugin_server, "/verify", body)
    assert response.status_code == 400
    assert "words" in response.json()["error"]["message"]


def test_servers_started_before_the_install_do_not_know_it(
    plugin_installed: None, server: Server
) -> None:
    """Entry points are read once per process; the plugin is only for servers started after."""
    body = {"prompt": "q", "candidates": ["a"], "verifiers": [{"type": "keywords", "words": ["a"]}]}
    response = post(server, "/verify", body)
    assert response.status_code == 400
    assert "unknown verifier type 'keywords'" in response.json()["error"]["message"]


def test_plugin_source_is_a_standalone_package() -> None:
    assert (PLUGIN / "pyproject.toml").is_file()
    assert (
        'keywords = "bestofk_plugin_example:KeywordsVerifier"'
        in (PLUGIN / "pyproject.toml").read_text()
    )
    assert not list(Path(PLUGIN).glob("*.egg-info")), "build files leaked into the source tree"
