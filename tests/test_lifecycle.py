"""Client disconnects abort the engine's work; the CLI drives a server; settings layer."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from bestofk.service.settings import Settings
from bestofk.tooling.procs import VENV_BIN, Server, free_port, start
from tests.conftest import model_path


def engine_gauges(metrics_url: str) -> tuple[float, float]:
    """(tokens generated so far, requests running) from vLLM's own metrics."""
    text = httpx.get(metrics_url, timeout=10).text
    values = {"vllm:generation_tokens_total": 0.0, "vllm:num_requests_running": 0.0}
    for line in text.splitlines():
        name = line.split("{", 1)[0]
        if name in values:
            values[name] += float(line.rsplit(" ", 1)[1])
    return values["vllm:generation_tokens_total"], values["vllm:num_requests_running"]


@pytest.mark.parametrize("engine", ["local", "remote"])
def test_client_disconnect_aborts_generation(
    engine: str, request: pytest.FixtureRequest, vllm_backend: Server
) -> None:
    server: Server = request.getfixturevalue("server" if engine == "local" else "remote_server")
    # Where the engine runs: in bestofk itself, or in the vLLM server behind it.
    metrics_url = (server if engine == "local" else vllm_backend).url + "/metrics"
    config = json.loads((Path(model_path()) / "config.json").read_text())
    max_tokens = min(2000, config["max_position_embeddings"] - 32)
    k = 16
    before, _ = engine_gauges(metrics_url)
    body = {
        "prompt": "Tell me a long story.",
        "k": k,
        "sampling": {"max_tokens": max_tokens, "min_tokens": max_tokens, "temperature": 1.0},
    }
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + "/generate", json=body, timeout=httpx.Timeout(60, read=0.5))
    time.sleep(2.0)
    generated, running = engine_gauges(metrics_url)
    time.sleep(1.0)
    later, _ = engine_gauges(metrics_url)
    assert running == 0, "the engine is still generating for a client that left"
    assert later == generated, "tokens kept coming after the disconnect"
    assert generated - before < k * max_tokens, "the request ran to completion"
    assert httpx.get(server.url + "/health", timeout=5).status_code == 200


def test_cli_generate_prints_table(server: Server) -> None:
    out = subprocess.run(
        [
            str(VENV_BIN / "bestofk"), "generate",
            "What's the factorial of 5? (Respond with a number only)",
            "--k", "3", "--url", server.url, "--verifier", "exact:reference=120",
            "--verifier", '{"type": "regex", "pattern": "\\\\d"}', "--max-tokens", "16",
        ],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "3 candidates" in out.stdout and "winner #" in out.stdout
    assert "exact:" in out.stdout and "regex:" in out.stdout


def test_settings_layers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "bestofk.yaml"
    config.write_text(
        "port: 9001\nlimits: {max_k: 12, max_tokens: 100}\n"
        "profiles:\n  p: {verifiers: [{type: exact, reference: '1'}], k: 3}\n"
    )
    monkeypatch.setenv("BESTOFK_CONFIG", str(config))
    monkeypatch.setenv("BESTOFK_LIMITS__MAX_K", "20")
    monkeypatch.setenv("BESTOFK_BACKENDS", "http://a:1,http://b:2")
    settings = Settings(port=9002)
    assert settings.port == 9002  # init (CLI) beats the file
    assert settings.limits.max_k == 20  # env beats the file
    assert settings.limits.max_tokens == 100  # the file beats defaults
    assert settings.backends == ["http://a:1", "http://b:2"]
    assert settings.engine == "openai"
    assert settings.profiles["p"].k == 3
    monkeypatch.setenv("BESTOFK_CONFIG", str(tmp_path / "missing.yaml"))
    with pytest.raises(FileNotFoundError, match=r"missing\.yaml"):
        Settings()


def test_cli_verifier_shorthand() -> None:
    from bestofk.service.cli.generate import parse_verifier

    assert parse_verifier("exact:reference=120") == {"type": "exact", "reference": "120"}
    assert parse_verifier("style:max_sentences=2;no_emoji=true") == {
        "type": "style", "max_sentences": "2", "no_emoji": "true",
    }  # fmt: skip
    assert parse_verifier('{"type": "regex", "pattern": "a"}') == {"type": "regex", "pattern": "a"}
    assert json.loads(json.dumps(parse_verifier("regex:pattern=^x$")))["pattern"] == "^x$"


def test_vllm_server_keeps_its_sockets_in_a_temp_dir_of_its_own(vllm_backend: Server) -> None:
    # vLLM leaves its ZMQ sockets behind when it stops; in the shared temp dir they pile up.
    assert vllm_backend.temp is not None
    sockets = [p.name for p in vllm_backend.temp.iterdir() if p.is_socket()]
    assert sockets, f"no vLLM sockets in {vllm_backend.temp}: VLLM_RPC_BASE_PATH was not used"


def test_stopping_a_server_removes_its_temp_dir(tmp_path: Path) -> None:
    temp = tmp_path / "own"
    temp.mkdir()
    (temp / "socket-stand-in").touch()
    server = start(["sleep", "60"], tmp_path / "sleep.log", {}, free_port())
    server.temp = temp
    server.stop()
    assert server.process.returncode is not None
    assert not temp.exists()
