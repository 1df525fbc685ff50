"""``bestofk eval`` on the demo's factorial tasks, through the real server."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from bestofk.tooling.procs import ROOT, VENV_BIN, Server


def test_eval_best_of_8_lifts_factorial_by_a_third(server: Server, tmp_path: Path) -> None:
    out, plot = tmp_path / "eval.json", tmp_path / "eval.png"
    run = subprocess.run(
        [
            str(VENV_BIN / "bestofk"), "eval", str(ROOT / "demo" / "tasks.jsonl"),
            "--family", "factorial", "--k", "1,2,4,8", "--url", server.url,
            "--selection", "argmax,vote", "--signals", "verifiers,none",
            # The sampling the lift was measured with (eval sends no defaults of its own).
            "--temperature", "1.0", "--max-tokens", "160", "--seed", "0",
            "--json", str(out), "--plot", str(plot),
        ],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr + run.stdout
    report = json.loads(out.read_text())
    row = report["families"]["factorial"]
    assert row["tasks"] == 13
    best_of_8 = row["best_of_k"]["verifiers/argmax"]["8"]
    assert best_of_8 - row["pass@1"] >= 0.3, row
    # Reranking cannot beat the ceiling, and more samples never hurt the ceiling.
    assert best_of_8 <= row["pass@k"]["8"] + 1e-9
    ceiling = [row["pass@k"][k] for k in ("1", "2", "4", "8")]
    assert ceiling == sorted(ceiling)
    assert abs(row["pass@k"]["1"] - row["pass@1"]) < 1e-9
    assert plot.stat().st_size > 10_000
    assert "factorial" in run.stdout and "pass@k (ceiling)" in run.stdout
