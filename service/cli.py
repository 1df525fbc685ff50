"""The ``bestofk`` command line. Each command is a thin call into the library."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import FrameType
from typing import Annotated, Any, Literal, get_args

import httpx
import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from service.selection import Policy, TieBreak

app = typer.Typer(help="Best-of-K reranking server for LLMs.", no_args_is_help=True)
console = Console()


def _settings(**overrides: Any) -> Any:
    from service.settings import Settings

    return Settings(**{k: v for k, v in overrides.items() if v not in (None, [], ())})


@app.command()
def serve(
    model: Annotated[str | None, typer.Option(help="Model path or name (in-process vLLM).")] = None,
    backend: Annotated[
        list[str] | None, typer.Option(help="OpenAI-compatible backend URL (repeatable).")
    ] = None,
    host: Annotated[str | None, typer.Option(help="Bind address.")] = None,
    port: Annotated[int | None, typer.Option(help="Port.")] = None,
    config: Annotated[Path | None, typer.Option(help="YAML settings file.")] = None,
    record_dir: Annotated[Path | None, typer.Option(help="Record verdicts here.")] = None,
    workers: Annotated[
        int | None, typer.Option(help="Worker processes; more than 1 needs --backend.")
    ] = None,
) -> None:
    """Run the server. Without --model or --backend it serves the bundled demo model."""
    import uvicorn

    if config is not None:
        os.environ["BESTOFK_CONFIG"] = str(config)
    settings = _settings(
        model=model,
        backends=backend,
        host=host,
        port=port,
        record_dir=record_dir,
        config=config,
        workers=workers,
    )
    _engine_env()
    if settings.workers > 1:
        flags = {"MODEL": model, "HOST": host, "PORT": port, "RECORD_DIR": record_dir}
        _serve_workers(settings, {**flags, "BACKENDS": ",".join(backend or []) or None})
        return
    _fresh_metrics_dir()
    from service.app import create_app

    with _engine_temp_dir(settings.engine == "vllm"):
        application = create_app(settings, exit_on_engine_failure=True)
        _exit_status_on_sigterm(application)
        uvicorn.run(
            application,
            host=settings.host,
            port=settings.port,
            log_level=settings.log_level,
            timeout_graceful_shutdown=settings.shutdown_grace_s,
            timeout_keep_alive=settings.keep_alive_s,
        )


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
    import shutil
    import tempfile

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


def _serve_workers(settings: Any, flags: dict[str, object]) -> None:
    """Several uvicorn workers over the remote engine, with metrics summed across them."""
    import shutil
    import tempfile

    import uvicorn

    if settings.engine != "openai":
        raise typer.BadParameter(
            "more than one worker needs --backend: each worker would load its own copy of "
            "the model into memory",
            param_hint="--workers",
        )
    # Workers are spawned and build their own Settings from the environment (app_from_env).
    for name, value in flags.items():
        if value is not None:
            os.environ[f"BESTOFK_{name}"] = str(value)
    # Set before the workers start: prometheus-client picks its multiprocess mode at import.
    given = _fresh_metrics_dir()
    path = given or Path(tempfile.mkdtemp(prefix="bestofk-metrics-"))
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
    try:
        uvicorn.run(
            "service.app:app_from_env",
            factory=True,
            workers=settings.workers,
            host=settings.host,
            port=settings.port,
            log_level=settings.log_level,
            timeout_graceful_shutdown=settings.shutdown_grace_s,
            timeout_keep_alive=settings.keep_alive_s,
        )
    finally:
        if not given:
            shutil.rmtree(path, ignore_errors=True)


def _fresh_metrics_dir() -> Path | None:
    """Empty ``PROMETHEUS_MULTIPROC_DIR``, if set, and return it.

    An earlier run's files would add its counts, and its dead workers' gauges, to this run's.
    Runs before ``service.metrics`` is imported in this process: its metrics map their files
    there at import, and a file deleted under them would record nothing.
    """
    import shutil

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


def _engine_env() -> None:
    # vLLM's CPU build sizes its KV cache from this (GiB); a small default fits small machines.
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


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
    prompt: Annotated[str, typer.Argument(help="The prompt.")],
    k: Annotated[int, typer.Option(help="Candidates to sample.")] = 8,
    verifier: Annotated[
        list[str] | None,
        typer.Option(help='Spec as JSON or shorthand, e.g. "exact:reference=120" (repeatable).'),
    ] = None,
    url: Annotated[str | None, typer.Option(help="A running bestofk server.")] = None,
    model: Annotated[str | None, typer.Option(help="Model for an in-process engine.")] = None,
    temperature: Annotated[float, typer.Option()] = 1.0,
    max_tokens: Annotated[int, typer.Option()] = 128,
    seed: Annotated[int | None, typer.Option()] = None,
) -> None:
    """One request; prints every candidate with its verdicts and marks the winner."""
    body = {
        "prompt": prompt,
        "k": k,
        "verifiers": [parse_verifier(v) for v in verifier or []],
        "sampling": {"temperature": temperature, "max_tokens": max_tokens, "seed": seed},
    }
    response = asyncio.run(_generate_once(body, url, model))
    _print(response)


async def _generate_once(body: dict[str, Any], url: str | None, model: str | None) -> Any:
    async with _client(url, model) as client:
        reply = await client.post("/generate", json=body, timeout=600)
    if reply.status_code >= 400:
        console.print(f"[red]{reply.status_code}[/red] {reply.text}")
        raise typer.Exit(1)
    return reply.json()


@contextlib.asynccontextmanager
async def _client(url: str | None, model: str | None) -> AsyncIterator[httpx.AsyncClient]:
    """A client for a running server at ``url``, or for an in-process one over ``model``."""
    if url:
        async with httpx.AsyncClient(base_url=url.rstrip("/")) as client:
            yield client
        return
    from service.app import create_app

    _engine_env()
    app = create_app(_settings(model=model))
    async with app.router.lifespan_context(app):
        with console.status("loading the model…"):
            await app.state.engine_loading
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bestofk") as client:
            yield client


@app.command("eval")
def evaluate(
    tasks: Annotated[Path, typer.Argument(help="Task set (JSONL), e.g. demo/tasks.jsonl.")],
    k: Annotated[str, typer.Option(help="Comma-separated K values.")] = "1,2,4,8,16",
    selection: Annotated[
        str, typer.Option(help="Policies: argmax,sample,vote.")
    ] = "argmax,sample,vote",
    signals: Annotated[
        str, typer.Option(help="What selection sees: verifiers,judge,none.")
    ] = "verifiers,none",
    family: Annotated[list[str] | None, typer.Option(help="Only these families.")] = None,
    url: Annotated[str | None, typer.Option(help="A running bestofk server.")] = None,
    model: Annotated[str | None, typer.Option(help="Model for an in-process engine.")] = None,
    temperature: Annotated[float, typer.Option()] = 1.0,
    max_tokens: Annotated[int, typer.Option()] = 160,
    seed: Annotated[int, typer.Option(help="Seeds subset draws and sample selection.")] = 0,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the report here.")] = None,
    plot_out: Annotated[Path | None, typer.Option("--plot", help="Write a PNG plot here.")] = None,
) -> None:
    """pass@1, pass@k and best-of-k per policy, per task family and overall."""
    from service import evaluation

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
    sampling = {"temperature": temperature, "max_tokens": max_tokens}
    samples, skipped = asyncio.run(_collect(task_list, max(ks), signal_list, sampling, url, model))
    report = evaluation.summarise(samples, ks, policies, signal_list, seed=seed)
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
    url: str | None,
    model: str | None,
) -> Any:
    from service import evaluation

    async with _client(url, model) as client:
        with Progress(console=console) as progress:
            bar = progress.add_task("sampling", total=len(tasks))
            return await evaluation.collect(
                client, tasks, n, signals, sampling, on_done=lambda: progress.advance(bar)
            )


def _print_report(report: Any) -> None:
    table = Table(title="best-of-k accuracy (pass@k is the ceiling)")
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
            table.add_row("", "", "", f"best-of-k {name}", *(f"{curve[k]:.2f}" for k in report.ks))
        table.add_row(
            "", "", "", "tokens/request",
            *(f"{row['tokens_per_request'][k]:.0f}" for k in report.ks), end_section=True,
        )  # fmt: skip
    console.print(table)
    for family, reason in report.skipped.items():
        console.print(f"[yellow]skipped[/yellow] {family}: {reason}")


def _print(response: dict[str, Any]) -> None:
    table = Table(title=f"{response['stats']['k']} candidates", show_lines=True)
    for column in ("#", "text", "score", "passed", "verdicts", "tokens"):
        table.add_column(column)
    for c in response.get("candidates") or []:
        winner = c["index"] == response["index"]
        verdicts = "\n".join(
            f"{v['verifier']}: {v['score']:.2f} {v['error'] or v['detail']}"[:80]
            for v in c["verdicts"]
        )
        table.add_row(
            ("★ " if winner else "") + str(c["index"]),
            c["text"][:200],
            f"{c['score']:.3f}",
            "yes" if c["passed"] else "no",
            verdicts,
            str(c["tokens"]),
            style="bold green" if winner else None,
        )
    console.print(table)
    t = response["timing"]
    console.print(
        f"winner #{response['index']} score {response['score']:.3f} "
        f"passed={response['passed']}  total {t['total_ms']:.0f} ms "
        f"(generate {t['generate_ms']:.0f}, verify {t['verify_ms']:.0f})"
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
        str | None, typer.Option(help="Model for the vLLM backend (default: the demo model).")
    ] = None,
    concurrency: Annotated[str, typer.Option(help="Comma-separated concurrencies.")] = "1,8,32",
    k: Annotated[str, typer.Option(help="Comma-separated K values.")] = "4,8,16",
    requests: Annotated[int, typer.Option(min=1, help="Requests per mode per cell.")] = 8,
    min_rounds: Annotated[
        int, typer.Option(min=1, help="Least bursts of `concurrency` requests per mode per cell.")
    ] = 2,
    big_cell_requests: Annotated[
        int | None,
        typer.Option(min=1, help="At most this many where concurrency x K >= 256."),
    ] = None,
    modes: Annotated[
        str,
        typer.Option(help="Modes a..g, i (in-process) and j (judge); see `bestofk bench --help`."),
    ] = "a,b,c,i,d,e,f,g,j",
    workload: Annotated[
        str,
        typer.Option(
            help="`code`: the demo's code tasks (~40-token answers); `short`: one factorial "
            "prompt (2-3 token answers, where a request's fixed cost dominates)."
        ),
    ] = "code",
    tie_break: Annotated[
        str,
        typer.Option(
            help="bestofk's selection.tie_break: `logprob` (the default) or `index` (the "
            "engine computes no logprobs)."
        ),
    ] = "logprob",
    no_targets: Annotated[
        bool, typer.Option("--no-targets", help="Only the grid: skip early exit, /health, RSS.")
    ] = False,
    logs: Annotated[
        Path | None, typer.Option(help="Server logs here (default: a temp dir).")
    ] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the report here.")] = None,
    markdown_out: Annotated[
        Path | None, typer.Option("--markdown", help="Write the markdown table here.")
    ] = None,
    plot_out: Annotated[Path | None, typer.Option("--plot", help="Write a PNG plot here.")] = None,
) -> None:
    """Side-by-side performance run: direct vLLM, naive fan-outs, OptiLLM and bestofk.

    Starts one vLLM server, a bestofk over it and a bestofk with its own in-process engine,
    then times, interleaved: (a) direct n=1, (b) direct n=K, (c) bestofk regex over the
    server, (i) the same in-process, (d) bestofk unit_tests on the demo code tasks, (e) K
    sequential n=1 calls, (f) K concurrent n=1 calls, (g) OptiLLM bon (if installed in
    /tmp/optillm-venv) and (j) bestofk judge, its comparable.
    """
    from service import bench as bench_lib
    from service.bench.modes import ALL_MODES, WORKLOADS
    from service.settings import DEMO_MODEL

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
    )
    _engine_env()
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
    Path, typer.Argument(help="A record file, or a --record-dir directory of them.")
]


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
    out: Annotated[Path, typer.Option(help="The JSONL file to write.")],
    min_margin: Annotated[
        float, typer.Option(help="dpo: least chosen score minus rejected score.")
    ] = 0.0,
    max_pairs: Annotated[int, typer.Option(min=1, help="dpo: most pairs per prompt.")] = 4,
    max_per_prompt: Annotated[
        int | None, typer.Option(min=1, help="rsft/kto: most completions per prompt (and label).")
    ] = None,
    only: Annotated[
        Literal["text", "chat"] | None,
        typer.Option(help="Only text prompts, or only chat prompts (a file holds one kind)."),
    ] = None,
) -> None:
    """Turn recorded verdicts into a dataset for TRL's DPO, SFT or KTO trainer."""
    from service.records.export import ExportError, ExportOptions, write_jsonl
    from service.records.export import export as export_records
    from service.records.format import RecordFormatError
    from service.records.reader import read_records

    options = ExportOptions(
        format=fmt,
        min_margin=min_margin,
        max_pairs=max_pairs,
        max_per_prompt=max_per_prompt,
        only=only,
    )
    try:
        result = export_records(read_records(records), options)
    except (ExportError, RecordFormatError, FileNotFoundError) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    rows = write_jsonl(result.rows, out)
    console.print(
        f"{rows} {fmt} rows for {result.prompts} prompts from {result.used} of "
        f"{result.records} records → {out}"
    )


@app.command()
def stats(
    records: RecordsArg,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write the report here as JSON ('-': stdout).")
    ] = None,
    source: Annotated[
        Literal["generate", "verify"] | None,
        typer.Option(help="Only sampled requests (generate) or only given candidates (verify)."),
    ] = None,
) -> None:
    """pass@1 vs pass@K per profile and verifier: would training on these verdicts pay?"""
    from service.records import stats as record_stats
    from service.records.format import RecordFormatError
    from service.records.reader import read_records

    try:
        report = record_stats.compute(read_records(records), source=source)
    except (RecordFormatError, FileNotFoundError) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    text = json.dumps(report.to_dict(), indent=2)
    if json_out is not None and str(json_out) == "-":
        print(text)  # only the JSON on stdout, for a pipe
        return
    console.print(record_stats.render(report))
    if json_out is not None:
        json_out.write_text(text + "\n")


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
    base: Annotated[str, typer.Option(help="The model to start from (path or hub name).")],
    out: Annotated[Path, typer.Option(help="Where to save the trained model.")],
    trl_arg: Annotated[
        list[str] | None,
        typer.Option(
            help="A TRL config field, key=value (JSON value), e.g. max_steps=60 (repeatable)."
        ),
    ] = None,
    trl_config: Annotated[
        Path | None, typer.Option(help="A YAML/JSON mapping of TRL config fields.")
    ] = None,
    source: Annotated[
        Literal["generate", "verify", "any"],
        typer.Option(
            help="Records of sampled requests (the model's own samples), /verify, or any."
        ),
    ] = "generate",
    keep_judge_only: Annotated[
        bool, typer.Option("--keep-judge-only", help="Keep records scored only by an LLM judge.")
    ] = False,
    min_margin: Annotated[float, typer.Option(help="dpo: least chosen minus rejected.")] = 0.0,
    max_pairs: Annotated[int, typer.Option(min=1, help="dpo: most pairs per prompt.")] = 4,
    max_per_prompt: Annotated[
        int | None, typer.Option(min=1, help="rsft: most completions per prompt.")
    ] = None,
    only: Annotated[
        Literal["text", "chat"] | None, typer.Option(help="Only text, or only chat prompts.")
    ] = None,
    reward_url: Annotated[
        str | None, typer.Option(help="grpo: the bestofk server whose /verify is the reward.")
    ] = None,
    reward_profile: Annotated[
        str | None, typer.Option(help="grpo: a server profile applied to every prompt.")
    ] = None,
    reward_field: Annotated[
        Literal["passed", "score"], typer.Option(help="grpo: reward = passed (1/0) or score.")
    ] = "passed",
) -> None:
    """Train the next model on the recorded verdicts (needs `pip install 'bestofk[train]'`)."""
    try:
        from tooling import train as training
    except ImportError as exc:
        console.print(f"[red]{exc}[/red]: install the extra, `pip install 'bestofk[train]'`")
        raise typer.Exit(1) from None
    from service.records.format import RecordFormatError
    from service.records.reader import read_records

    try:
        options = training.TrainOptions(
            method=method,
            base=base,
            out=out,
            trl_args=training.parse_trl_args(trl_arg or [], trl_config),
            source=None if source == "any" else source,
            skip_judge_only=not keep_judge_only,
            min_margin=min_margin,
            max_pairs=max_pairs,
            max_per_prompt=max_per_prompt,
            only=only,
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
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
