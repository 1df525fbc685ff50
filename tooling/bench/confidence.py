"""``python -m bestofk.tooling.bench.confidence URL``: confidence-aware stopping on the demo.

Sends the demo's thinking prompts (the factorial of 5 to 8, eight seeds each) to the server at
URL as K=8 ``vote`` requests, without confidence-aware stopping and with it (``keep`` high and
low, a warm-up of 4), and prints each mode's completion tokens, cut candidates and how often
the vote chose the right number: the README's table.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import httpx

MODES: dict[str, dict[str, Any] | None] = {
    "off": None,
    "high": {"warmup": 4, "keep": "high"},
    "low": {"warmup": 4, "keep": "low"},
}
NUMBERS = (5, 6, 7, 8)
SEEDS = range(10, 90, 10)


def run(url: str, confidence: dict[str, Any] | None) -> tuple[int, int, int, int]:
    """(requests, completion tokens, candidates cut, votes right) of one mode."""
    requests = tokens = cut = right = 0
    with httpx.Client(base_url=url, timeout=300) as client:
        for n in NUMBERS:
            for seed in SEEDS:
                body: dict[str, Any] = {
                    "prompt": f"Think step by step, then give the factorial of {n} as a number.",
                    "k": 8,
                    "sampling": {"temperature": 1.0, "max_tokens": 80, "seed": seed},
                    "selection": {"policy": "vote"},
                }
                if confidence is not None:
                    body["confidence"] = confidence
                response = client.post("/generate", json=body)
                response.raise_for_status()
                result = response.json()
                requests += 1
                tokens += result["usage"]["completion_tokens"]
                cut += result["stats"]["cut"]
                answer = result["text"].rpartition("</think>")[2].strip()
                right += answer == str(math.factorial(n))
    return requests, tokens, cut, right


def main() -> None:
    """Print one line per mode."""
    url = sys.argv[1]
    print("| confidence | requests | completion tokens | cut | vote right |")
    print("| --- | --- | --- | --- | --- |")
    for name, confidence in MODES.items():
        requests, tokens, cut, right = run(url, confidence)
        print(f"| {name} | {requests} | {tokens:,} | {cut} | {right}/{requests} |")


if __name__ == "__main__":
    main()
