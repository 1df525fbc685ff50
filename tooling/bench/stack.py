"""The servers under test: one vLLM backend, bestofk in front of it, a bestofk with its own
in-process engine, and OptiLLM if installed.

The proxy bestofk runs the ``openai`` engine against the same vLLM server the direct modes
call, so those modes meet the same engine, batch scheduler and KV cache. The in-process bestofk
(mode i) builds its engine with the backend's settings; only one engine is busy at a time,
since the grid runs one mode's burst after another.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bestofk.tooling.bench.modes import Endpoints
from bestofk.tooling.procs import (
    Server,
    engine_env,
    free_port,
    running,
    start,
    start_bestofk,
    start_vllm_openai,
)

SERVED_NAME = "demo"
VLLM_START_S = 600.0
"""A cold CPU engine on a busy machine can take minutes."""
OPTILLM_START_S = 120.0
OPTILLM_VENV = Path(os.environ.get("OPTILLM_VENV", "/tmp/optillm-venv"))
"""Where ``bestofk bench`` looks for OptiLLM (env ``OPTILLM_VENV``): a venv of its own, since
its pins (torch, transformers, fastapi) clash with ours."""

BENCH_MAX_NUM_SEQS = "256"
"""vLLM's batch cap: 32 concurrent best-of-8 requests are 256 sequences; the tests' 64 would
queue them inside vLLM and measure its queue rather than the modes."""
SERVICE_ENV = {
    # 32 best-of-16 unit_tests requests queue 512 sandbox runs; the defaults (64 queued, 10 s)
    # are for shedding load in production, and would turn the benchmark into a 503 count.
    "BESTOFK_SANDBOX_MAX_QUEUE": "2048",
    "BESTOFK_SANDBOX_QUEUE_TIMEOUT_S": "600",
    "BESTOFK_LIMITS__QUEUE_TIMEOUT_S": "600",
}
LOCAL_ENV = {
    # The backend's batch cap and KV cache (VLLM_CPU_KVCACHE_SPACE, gpu_memory_utilization 0.3
    # and enforce_eager are both sides' defaults), so (i) and (b) differ only in the route.
    "BESTOFK_VLLM__ENGINE_ARGS": json.dumps({"max_num_seqs": int(BENCH_MAX_NUM_SEQS)}),
    "BESTOFK_SERVED_MODEL_NAME": "demo",
}


def start_local_bestofk(log: Path, model: str, port: int | None = None, **env: str) -> Server:
    """bestofk with its own in-process engine on ``model``, configured as the benchmarks
    measure it (:data:`SERVICE_ENV`, :data:`LOCAL_ENV`, then ``env``), on ``port`` (default: a
    free one); started, not yet ready."""
    return start_bestofk(
        log, "--model", model, env=engine_env(**SERVICE_ENV, **LOCAL_ENV, **env), port=port
    )


@dataclass(slots=True)
class Stack:
    """The running servers."""

    endpoints: Endpoints
    bestofk_pid: int
    vllm_pid: int
    skipped: dict[str, str] = field(default_factory=dict)
    """Modes the stack cannot offer, with the reason."""


def optillm_command(port: int, backend: str, k: int) -> list[str] | str:
    """OptiLLM's bon proxy with n = ``k`` in front of ``backend``, or why it cannot run."""
    exe = OPTILLM_VENV / "bin" / "optillm"
    if not exe.is_file():
        return (
            f"optillm is not installed in {OPTILLM_VENV} (python3 -m venv {OPTILLM_VENV} && "
            f"{OPTILLM_VENV}/bin/pip install optillm)"
        )
    return [
        str(exe), "--base-url", backend + "/v1", "--port", str(port), "--approach", "bon",
        "--best-of-n", str(k),
    ]  # fmt: skip


@contextlib.contextmanager
def started(
    model: str,
    logs: Path,
    optillm_ks: Sequence[int] = (),
    local: bool = True,
    log: Callable[[str], None] = print,
    port: int | None = None,
    split: bool = False,
    local_joint: bool = False,
) -> Iterator[Stack]:
    """Start the servers (an OptiLLM per K in ``optillm_ks``; the in-process bestofk if
    ``local``), yield them ready, stop them. ``port``: they listen on consecutive ports from
    it (vLLM, bestofk, the in-process bestofk, then OptiLLM per K); default: free ones."""
    logs.mkdir(parents=True, exist_ok=True)
    ports = itertools.count(port) if port else iter(free_port, None)
    with contextlib.ExitStack() as stack:
        log(f"starting vLLM on {model} (logs in {logs})")
        vllm = stack.enter_context(
            running(
                start_vllm_openai(
                    logs / "vllm.log",
                    model,
                    SERVED_NAME,
                    "--max-num-seqs",
                    BENCH_MAX_NUM_SEQS,
                    port=next(ports),
                ),
                VLLM_START_S,
            )
        )
        log(f"vLLM ready at {vllm.url}; starting bestofk --backend {vllm.url}")
        service = start_bestofk(
            logs / "bestofk.log",
            "--backend",
            vllm.url,
            env=engine_env(**SERVICE_ENV),
            port=next(ports),
        )
        stack.callback(service.stop)
        skipped: dict[str, str] = {}
        local_port = next(ports)
        split_service = None
        if split:
            split_service = start_bestofk(
                logs / "bestofk-split.log",
                "--backend",
                vllm.url,
                env=engine_env(**SERVICE_ENV, BESTOFK_SPLIT_CANDIDATES="true"),
                port=next(ports),
            )
            stack.callback(split_service.stop)
            split_service.wait_ready(120)
        proxies = _start_optillm(stack, vllm.url, optillm_ks, logs, skipped, log, ports)
        service.wait_ready(120)
        in_process = None
        if local:
            log(f"starting bestofk with an in-process engine on {model}")
            in_process = start_local_bestofk(logs / "bestofk-local.log", model, local_port)
            stack.callback(in_process.stop)
            in_process.wait_ready(VLLM_START_S)
        local_joint_server = None
        if local_joint:
            log(f"starting bestofk with an in-process engine on {model}, split_candidates off")
            local_joint_server = start_local_bestofk(
                logs / "bestofk-local-joint.log",
                model,
                next(ports),
                BESTOFK_SPLIT_CANDIDATES="false",
            )
            stack.callback(local_joint_server.stop)
            local_joint_server.wait_ready(VLLM_START_S)
        yield Stack(
            Endpoints(
                vllm=vllm.url,
                bestofk=service.url,
                bestofk_local=in_process.url if in_process else None,
                bestofk_split=split_service.url if split_service else None,
                bestofk_local_joint=local_joint_server.url if local_joint_server else None,
                model=SERVED_NAME,
                optillm=proxies,
            ),
            bestofk_pid=service.process.pid,
            vllm_pid=vllm.process.pid,
            skipped=skipped,
        )


def _start_optillm(
    stack: contextlib.ExitStack,
    backend: str,
    ks: Sequence[int],
    logs: Path,
    skipped: dict[str, str],
    log: Callable[[str], None],
    ports: Iterator[int],
) -> dict[int, str]:
    """One OptiLLM per K, started side by side; on any failure (g) is skipped with why."""
    if not ks:
        return {}
    # OptiLLM talks to the backend with the OpenAI client, which insists on a key; nothing
    # here may reach a model hub.
    env = {**engine_env(), "OPENAI_API_KEY": "sk-bench", "HF_HUB_OFFLINE": "1"}
    servers: dict[int, Server] = {}
    for k in ks:
        port = next(ports)
        command = optillm_command(port, backend, k)
        if isinstance(command, str):
            skipped["g"] = command
            return {}
        # Its cwd is the log directory: OptiLLM looks for plugins relative to it.
        servers[k] = start(command, logs / f"optillm-k{k}.log", env, port, cwd=logs)
        stack.callback(servers[k].stop)
    log(f"starting OptiLLM bon for K in {list(servers)}")
    try:
        for server in servers.values():
            server.wait_ready(OPTILLM_START_S)
    except RuntimeError as exc:
        skipped["g"] = f"OptiLLM did not start: {str(exc)[-500:]}"
        return {}
    return {k: server.url for k, server in servers.items()}


def logs_dir(path: Path | None) -> Path:
    """The log directory: ``path``, or a fresh temporary one."""
    import tempfile

    if path is not None:
        return path
    return Path(tempfile.mkdtemp(prefix="bestofk-bench-"))


__all__ = ["Stack", "logs_dir", "started"]
