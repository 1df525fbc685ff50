"""Closing the loop: served verdicts train the next model (``bestofk train``), and bestofk is the
reward of on-policy RL (``BestOfKReward`` for TRL's GRPO, OpenRLHF's ``/get_reward``).

The demo model only memorises its prompts, so every pass@1 here is on the task prompts it was
trained on: the lift measures mass moved onto the right answers, not generalisation.
"""

from __future__ import annotations

import json
import logging
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from bestofk.tooling import measure
from bestofk.tooling.procs import ROOT, VENV_BIN, Server, engine_env, free_port, start_bestofk
from bestofk.tooling.reward import BestOfKReward
from bestofk.tooling.train import TrainError, TrainOptions, parse_trl_args
from bestofk.tooling.train import train as train_model
from tests.conftest import CONFIG, model_path

TASKS = ROOT / "demo" / "tasks.jsonl"
# The judge family's tasks carry only a judge verifier: `bestofk train` leaves them out.
FAMILIES = ("factorial", "dates", "code", "summary")


def _bestofk(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    run = subprocess.run(
        [str(VENV_BIN / "bestofk"), *args], capture_output=True, text=True, timeout=timeout
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return run


def _eval(url: str, out: Path, *flags: str) -> dict[str, Any]:
    _bestofk(
        "eval", str(TASKS), "--url", url, "--k", "1,8", "--selection", "argmax",
        "--signals", "verifiers", "--json", str(out),
        # The sampling the lifts were measured with (eval sends no defaults of its own).
        "--temperature", "1.0", "--max-tokens", "160", "--seed", "0", *flags,
    )  # fmt: skip
    report: dict[str, Any] = json.loads(out.read_text())
    return report


@dataclass
class Traffic:
    records: Path
    before: dict[str, Any]
    """``bestofk eval`` of the demo model: pass@1 and best-of-8 per family."""


@pytest.fixture(scope="module")
def traffic(vllm_backend: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Traffic]:
    """One k=8 eval pass over the demo's answer families through a recording bestofk (judge-only
    tasks included: training must leave them out)."""
    base = tmp_path_factory.mktemp("traffic")
    env = engine_env(BESTOFK_CONFIG=str(CONFIG))
    recording = start_bestofk(
        base / "bestofk.log", "--backend", vllm_backend.url, "--record-dir", str(base / "rec"),
        env=env,
    )  # fmt: skip
    try:
        recording.wait_ready(60)
        # The families the lift is measured on, and the judge's (which training leaves out).
        families = [flag for family in (*FAMILIES, "judge") for flag in ("--family", family)]
        before = _eval(recording.url, base / "before.json", *families)
    finally:
        recording.stop()
    yield Traffic(base / "rec", before)


def _pass_at_1(report: dict[str, Any]) -> float:
    rows = report["families"]
    return sum(rows[f]["pass@1"] * rows[f]["tasks"] for f in FAMILIES) / sum(
        rows[f]["tasks"] for f in FAMILIES
    )


def test_rsft_on_served_verdicts_lifts_pass_at_1_within_a_kl_budget(
    traffic: Traffic, tmp_path: Path
) -> None:
    """records → ``bestofk train --method rsft`` → ``bestofk serve --model DIR`` → eval."""
    out = tmp_path / "rsft"
    run = _bestofk(
        "train", str(traffic.records), "--method", "rsft", "--base", model_path(), "--out", str(out)
    )
    assert "rsft:" in run.stdout
    config = json.loads((out / "config.json").read_text())
    assert config["use_cache"] is True  # the Trainer writes false; a served model needs the cache
    summary = json.loads((out / "bestofk_train.json").read_text())
    assert summary["config"]["bf16"] is False and summary["config"]["learning_rate"] == 3e-4
    # Judge-only records (8 tasks) are left out; every other task's record is used.
    assert summary["used"] == sum(traffic.before["families"][f]["tasks"] for f in FAMILIES)

    served = start_bestofk(tmp_path / "trained.log", "--model", str(out), env=engine_env())
    try:
        served.wait_ready(300)
        families = [flag for family in FAMILIES for flag in ("--family", family)]
        after = _eval(served.url, tmp_path / "after.json", *families)
    finally:
        served.stop()
    before_p1, after_p1 = _pass_at_1(traffic.before), _pass_at_1(after)
    assert after_p1 - before_p1 >= 0.3, (before_p1, after_p1, after["families"])
    prompts = [json.loads(line)["prompt"] for line in TASKS.read_text().splitlines()]
    kl = measure.kl_per_completion(str(out), model_path(), prompts[::3], n=4)
    assert 0.05 < kl <= 1.5, kl


def test_dpo_with_sft_term_smoke(traffic: Traffic, tmp_path: Path) -> None:
    """Pairs from the same records train under DPO+SFT and save a loadable model."""
    out = tmp_path / "dpo"
    run = _bestofk(
        "train", str(traffic.records), "--method", "dpo", "--base", model_path(),
        "--out", str(out), "--trl-arg", "max_steps=2", "--trl-arg", "per_device_train_batch_size=8",
    )  # fmt: skip
    assert "dpo:" in run.stdout
    summary = json.loads((out / "bestofk_train.json").read_text())
    assert summary["config"]["loss_type"] == ["sigmoid", "sft"]
    assert summary["rows"] > summary["prompts"] > 0
    texts = measure.sample(str(out), "What's the factorial of 5? (Respond with a number only)", 2)
    assert len(texts) == 2


def test_grpo_steps_rewarded_by_a_live_verify(
    traffic: Traffic, server: Server, tmp_path: Path
) -> None:
    """GRPO on the recorded prompts; every reward comes from the live server's /verify."""
    out = tmp_path / "grpo"
    _bestofk(
        "train", str(traffic.records), "--method", "grpo", "--base", model_path(),
        "--out", str(out), "--reward-url", server.url,
        "--trl-arg", "max_steps=2", "--trl-arg", "num_generations=4",
        "--trl-arg", "per_device_train_batch_size=8", "--trl-arg", "max_completion_length=48",
    )  # fmt: skip
    summary = json.loads((out / "bestofk_train.json").read_text())
    usage = summary["reward_usage"]
    # 2 steps x 2 prompts, one /verify call per prompt group of 4 completions.
    assert usage["calls"] == 4 and usage["candidates"] == 16 and usage["errors"] == 0, usage
    assert summary["config"]["beta"] > 0  # GRPOConfig's own default is 0: no KL leash


async def test_reward_function_groups_by_prompt_and_scores_through_verify(
    server: Server,
) -> None:
    reward = BestOfKReward(server.url)
    prompts = ["What's the factorial of 5?"] * 3 + ["What's the factorial of 3?"] * 2
    spec5 = json.dumps([{"type": "exact", "reference": "120"}])
    spec3 = json.dumps([{"type": "exact", "reference": "6"}])
    rewards = await reward(
        prompts=prompts,
        completions=["120", "24", "120.0", "6", "The answer is 6."],
        verifiers=[spec5] * 3 + [spec3] * 2,
    )
    assert rewards == [1.0, 0.0, 1.0, 1.0, 0.0]
    assert reward.usage["calls"] == 2 and reward.usage["candidates"] == 5
    # Conversational prompts and completions (TRL's chat format) go as messages.
    chat = await reward(
        prompts=[[{"role": "user", "content": "What's the factorial of 5?"}]],
        completions=[[{"role": "assistant", "content": "120"}]],
        verifiers=[spec5],
    )
    assert chat == [1.0]


async def test_reward_function_turns_failed_calls_into_zero_with_a_warning(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    down = BestOfKReward(f"http://127.0.0.1:{free_port()}", timeout_s=5)
    with caplog.at_level(logging.WARNING, logger="bestofk.tooling.reward"):
        assert await down(prompts=["p"], completions=["x"], verifiers=["[]"]) == [0.0]
    assert down.usage["errors"] == 1 and "reward 0" in caplog.text
    # A 400 (an unknown verifier type) is an error too, not a wrong answer.
    bad = BestOfKReward(server.url)
    rewards = await bad(
        prompts=["p", "p"], completions=["a", "b"], verifiers=['[{"type": "nope"}]'] * 2
    )
    assert rewards == [0.0, 0.0] and bad.usage["errors"] == 1


def test_openrlhf_get_reward(server: Server) -> None:
    """OpenRLHF's remote reward protocol: labels are references or JSON specs, a profile
    applies to all, the response is what follows the prompt in the query."""
    p5 = "What's the factorial of 5? (Respond with a number only)"
    regex = json.dumps({"type": "regex", "pattern": "^[0-9]+$", "mode": "fullmatch"})
    body = {
        "query": [f"<s>{p5}120</s>", f"<s>{p5}24</s>", f"{p5}120", "Say digits: 12a", "Q: 7"],
        "prompts": [p5, p5, p5, "Say digits: ", "Q: "],
        "labels": ["120", "120", regex, None, ""],
    }
    reply = httpx.post(
        server.url + "/get_reward",
        params={"profile": "digits", "stop": "</s>"},
        json=body,
        timeout=60,
    )
    assert reply.status_code == 200, reply.text
    out = reply.json()
    # digits (a required ^\d+$) applies to all; "12a" fails it, "7" passes it.
    assert out["scores"] == [1.0, 0.0, 1.0, 0.0, 1.0]
    assert out["rewards"][0] == 1.0 and out["rewards"][1] < 1.0
    assert out["extra_logs"] == {"verifier_error": [0.0] * 5}


@pytest.mark.parametrize(
    ("body", "params", "param"),
    [
        ({"query": ["a"], "prompts": ["a", "b"]}, {}, None),
        ({"query": ["xyz"], "prompts": ["q"], "labels": ["1"]}, {}, "query.0"),
        ({"query": ["q1"], "prompts": ["q"]}, {}, "labels.0"),
        ({"query": ["q1"], "prompts": ["q"], "labels": ['{"type": "nope"}']}, {}, "labels.0"),
        ({"query": ["q1"], "prompts": ["q"], "labels": ["1"]}, {"profile": "missing"}, None),
    ],
)
def test_get_reward_bad_input_is_a_4xx_envelope(
    server: Server, body: dict[str, Any], params: dict[str, str], param: str | None
) -> None:
    reply = httpx.post(server.url + "/get_reward", params=params, json=body, timeout=30)
    assert 400 <= reply.status_code < 500, reply.text
    error = reply.json()["error"]
    assert error["message"]
    if param is not None:
        assert error["param"] == param, error


def test_trl_arguments_are_all_reachable_and_checked(tmp_path: Path) -> None:
    config = tmp_path / "trl.yaml"
    config.write_text("max_steps: 5\nwarmup_steps: 2\n")
    args = parse_trl_args(
        ["max_steps=7", 'loss_type=["sigmoid"]', "optim=adamw_torch", "lr_scheduler_type=cosine"],
        config,
    )
    assert args == {
        "max_steps": 7, "warmup_steps": 2, "loss_type": ["sigmoid"], "optim": "adamw_torch",
        "lr_scheduler_type": "cosine",
    }  # fmt: skip
    with pytest.raises(TrainError, match="key=value"):
        parse_trl_args(["max_steps"])
    with pytest.raises(TrainError, match="no rsft rows"):
        train_model(iter([]), TrainOptions("rsft", model_path(), tmp_path / "out"))


def test_unknown_trl_field_is_refused(traffic: Traffic, tmp_path: Path) -> None:
    run = subprocess.run(
        [
            str(VENV_BIN / "bestofk"), "train", str(traffic.records), "--method", "rsft",
            "--base", model_path(), "--out", str(tmp_path / "x"), "--trl-arg", "max_stepz=3",
        ],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 1
    assert "max_stepz" in run.stdout + run.stderr
