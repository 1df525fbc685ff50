"""Real processes for the tests: bestofk servers and a vLLM OpenAI server, on loopback.

The implementation lives in :mod:`service.procs` (``bestofk bench`` starts the same servers).
"""

from __future__ import annotations

from service.procs import (
    ROOT,
    VENV_BIN,
    Server,
    engine_env,
    free_port,
    running,
    start,
    start_bestofk,
    start_vllm_openai,
)

__all__ = [
    "ROOT",
    "VENV_BIN",
    "Server",
    "engine_env",
    "free_port",
    "running",
    "start",
    "start_bestofk",
    "start_vllm_openai",
]
