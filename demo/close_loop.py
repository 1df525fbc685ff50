"""The README's walk-through, measured: serve → traffic → train → serve the new model → eval.

    python demo/close_loop.py --work /tmp/close-loop [--trl-arg grpo:max_steps=20]

1. serves the demo model with ``--record-dir`` and sends one ``bestofk eval --k 8`` pass over
   ``demo/tasks.jsonl`` (the before-table, and the records);
2. ``bestofk train`` per method (grpo rewarded by a bestofk ``/verify`` over the demo model);
3. serves each trained model and runs the same ``bestofk eval`` (the after-table);
4. measures KL(trained ‖ demo) per completion and the judge's pair accuracy with transformers,
   and samples 5! K times before and after;
5. writes ``demo/train.json`` and ``demo/train.png`` and prints the README table.

The demo model only memorises its prompts: every figure is on the task prompts it was trained
on, so a lift is probability mass moved onto right answers it already knew, not generalisation.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

# `measure` here is the sibling module: run as a script, this directory is on sys.path.
import measure as demo_measure

from bestofk.tooling import measure
from bestofk.tooling.procs import VENV_BIN, Server, running, start_bestofk

ROOT = Path(__file__).resolve().parent.parent

MODEL = ROOT / "demo" / "model"
TASKS = ROOT / "demo" / "tasks.jsonl"
FAMILIES = ("factorial", "dates", "code", "summary")
FIVE = "What's the factorial of 5? (Respond with a number only)"
K = 8
FIVE_SAMPLES = 32
"""Samples of 5! per model for the plot: 8 are too few to see a distribution move."""


def bestofk(*args: str) -> str:
    """Run the CLI; its stdout, or exit with its output."""
    run = subprocess.run([str(VENV_BIN / "bestofk"), *args], capture_output=True, text=True)
    if run.returncode != 0:
        sys.exit(f"bestofk {' '.join(args)} failed:\n{run.stdout[-3000:]}{run.stderr[-3000:]}")
    return run.stdout


def evaluate(server: Server, out: Path) -> dict[str, Any]:
    """``bestofk eval --k 1,8`` over every task (the judge family included, as sent)."""
    bestofk(
        "eval", str(TASKS), "--url", server.url, "--k", "1,8", "--selection", "argmax",
        "--signals", "verifiers", "--json", str(out),
        # The sampling the README's figures were measured with (eval sends no defaults).
        "--temperature", "1.0", "--max-tokens", "160", "--seed", "0",
    )  # fmt: skip
    report: dict[str, Any] = json.loads(out.read_text())
    return report


def judge_accuracy(model: str, family: str) -> float:
    """demo/measure.py's judge pair accuracy, with transformers instead of vLLM."""
    pairs: list[tuple[int, int]] = []
    prompts: list[str] = []
    for task in demo_measure.load_tasks():
        if task["family"] != family:
            continue
        ref = next(v["reference"] for v in task["verifiers"] if v["type"] == "exact")
        right = len(prompts)
        prompts.append(demo_measure.JUDGE_TEMPLATE.format(prompt=task["prompt"], candidate=ref))
        for wrong in demo_measure.wrong_answers(task):
            pairs.append((right, len(prompts)))
            prompts.append(
                demo_measure.JUDGE_TEMPLATE.format(prompt=task["prompt"], candidate=wrong)
            )
    probs = measure.next_token_prob(model, prompts, demo_measure.JUDGE_YES)
    return sum(probs[r] > probs[w] for r, w in pairs) / len(pairs)


def describe(model: str, prompts: list[str]) -> dict[str, Any]:
    """KL to the demo model, judge accuracy, and K samples of 5!."""
    return {
        "kl": measure.kl_per_completion(model, str(MODEL), prompts, n=8)
        if model != str(MODEL)
        else 0.0,
        "judge_pair_accuracy": {f: judge_accuracy(model, f) for f in ("factorial", "dates")},
        "five": measure.sample(model, FIVE, FIVE_SAMPLES, max_new_tokens=32, seed=0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="records, models, logs")
    parser.add_argument("--methods", default="rsft,dpo,grpo")
    parser.add_argument(
        "--trl-arg", action="append", default=[], help="METHOD:key=value, e.g. grpo:max_steps=20"
    )
    parser.add_argument("--json", type=Path, default=ROOT / "demo" / "train.json")
    parser.add_argument("--plot", type=Path, default=ROOT / "demo" / "train.png")
    parser.add_argument(
        "--replot", action="store_true", help="resample 5! and redraw from the --json results"
    )
    args = parser.parse_args()
    work: Path = args.work
    if args.replot:
        results = json.loads(args.json.read_text())
        names = [n for n in results if n != "before"]
        for name in ("before", *names):
            model = str(MODEL) if name == "before" else str(work / name)
            results[name]["five"] = measure.sample(model, FIVE, FIVE_SAMPLES, max_new_tokens=32)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(table(results, names))
        plot(results, names, args.plot)
        return
    work.mkdir(parents=True, exist_ok=True)
    methods = [m for m in args.methods.split(",") if m]
    prompts = [t["prompt"] for t in demo_measure.load_tasks() if t["family"] in FAMILIES]

    demo = start_bestofk(work / "demo.log", "--record-dir", str(work / "records"))
    results: dict[str, Any] = {}
    with running(demo, 300):
        before = work / "before.json"
        # A rerun in the same --work keeps what is there: the traffic and the trained models.
        report = json.loads(before.read_text()) if before.exists() else evaluate(demo, before)
        results["before"] = {"eval": report}
        for method in methods:
            if (work / method / "bestofk_train.json").exists():
                results[method] = {
                    "train": json.loads((work / method / "bestofk_train.json").read_text())
                }
                continue
            extra = [
                flag
                for spec in args.trl_arg
                if spec.startswith(f"{method}:")
                for flag in ("--trl-arg", spec.partition(":")[2])
            ]
            reward = ["--reward-url", demo.url] if method == "grpo" else []
            print(f"training {method}…", flush=True)
            bestofk(
                "train", str(work / "records"), "--method", method, "--base", str(MODEL),
                "--out", str(work / method), *reward, *extra,
            )  # fmt: skip
            summary = json.loads((work / method / "bestofk_train.json").read_text())
            results[method] = {"train": summary}
    for method in methods:
        trained = start_bestofk(work / f"{method}.log", "--model", str(work / method))
        with running(trained, 300):
            results[method]["eval"] = evaluate(trained, work / f"after-{method}.json")
    for name in ("before", *methods):
        model = str(MODEL) if name == "before" else str(work / name)
        results[name].update(describe(model, prompts))
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results, methods))
    plot(results, methods, args.plot)


def _families(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = report["families"]
    return rows


def _trained_pass_at_1(report: dict[str, Any]) -> float:
    rows = _families(report)
    total = sum(rows[f]["tasks"] for f in FAMILIES)
    return sum(rows[f]["pass@1"] * rows[f]["tasks"] for f in FAMILIES) / total


def table(results: dict[str, Any], methods: list[str]) -> str:
    """The README table: pass@1 per family, KL, judge accuracy, training seconds."""
    head = (
        "| model | "
        + " | ".join(FAMILIES)
        + " | all 4 | KL (nats) | judge acc. (fact./dates) | training s |"
    )
    lines = [head, "|" + " --- |" * (len(FAMILIES) + 5)]

    def row(name: str, key: str, metric: str) -> str:
        res = results[key]
        fam = _families(res["eval"])
        if metric == "best":
            cells = [f"{fam[f]['best_of_k']['verifiers/argmax']['8']:.2f}" for f in FAMILIES]
            rows = fam
            total = sum(rows[f]["tasks"] for f in FAMILIES)
            overall = (
                sum(
                    rows[f]["best_of_k"]["verifiers/argmax"]["8"] * rows[f]["tasks"]
                    for f in FAMILIES
                )
                / total
            )
            return f"| {name} | " + " | ".join(cells) + f" | {overall:.2f} | — | — | — |"
        cells = [f"{fam[f]['pass@1']:.2f}" for f in FAMILIES]
        judge = res["judge_pair_accuracy"]
        seconds = f"{res['train']['train_seconds']:.0f}" if "train" in res else ""
        return (
            f"| {name} | " + " | ".join(cells) + f" | {_trained_pass_at_1(res['eval']):.2f} | "
            f"{res['kl']:.2f} | {judge['factorial']:.2f} / {judge['dates']:.2f} | {seconds} |"
        )

    lines.append(row("demo model, pass@1", "before", "p1"))
    lines.append(row("demo model, best-of-8 (bestofk)", "before", "best"))
    for method in methods:
        label = {"rsft": "rsft", "dpo": "dpo+sft", "grpo": "grpo"}[method]
        lines.append(row(f"{label}, pass@1", method, "p1"))
    return "\n".join(lines)


def plot(results: dict[str, Any], methods: list[str], path: Path) -> None:
    """The seed's picture: 5! sampled K times before and after, and pass@1 per family before,
    after each method, and best-of-K before."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2), width_ratios=[1, 1.5])
    shown = ["before", *methods]
    answers: list[str] = []
    counts = {name: Counter(results[name]["five"]) for name in shown}
    for c in counts.values():
        answers.extend(a for a in c if a not in answers)
    width = 0.8 / len(shown)
    for j, name in enumerate(shown):
        xs = [i + j * width for i in range(len(answers))]
        label = "before (demo model)" if name == "before" else f"after ({name})"
        left.bar(xs, [counts[name][a] for a in answers], width, label=label)
    left.set_xticks([i + width * (len(shown) - 1) / 2 for i in range(len(answers))])
    left.set_xticklabels([a if len(a) < 18 else a[:16] + "…" for a in answers], rotation=30,
                         ha="right", fontsize=8)  # fmt: skip
    left.set_ylabel(f"of {FIVE_SAMPLES} samples")
    left.set_title(f'"{FIVE[:30]}…": {FIVE_SAMPLES} samples (right: 120)', fontsize=9)
    left.legend(fontsize=8)

    bars = [("pass@1 before", "before", "pass@1")]
    bars += [(f"pass@1 after {m}", m, "pass@1") for m in methods]
    bars.append((f"best-of-{K} before (bestofk)", "before", "best"))
    width = 0.8 / len(bars)
    for j, (label, key, metric) in enumerate(bars):
        fam = _families(results[key]["eval"])
        values = [
            fam[f]["pass@1"] if metric == "pass@1" else fam[f]["best_of_k"]["verifiers/argmax"]["8"]
            for f in FAMILIES
        ]
        right.bar([i + j * width for i in range(len(FAMILIES))], values, width, label=label)
    right.set_xticks([i + width * (len(bars) - 1) / 2 for i in range(len(FAMILIES))])
    right.set_xticklabels(FAMILIES)
    right.set_ylim(0, 1.3)
    right.set_ylabel("accuracy")
    right.set_title("pass@1 ≈ pass@k after training: the mass moved onto verified answers",
                    fontsize=9)  # fmt: skip
    right.legend(fontsize=7, loc="upper center", ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
