"""``bestofk bench``: the side-by-side performance run, or bestofk's CPU per request alone."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Annotated, get_args

import typer

from bestofk.service.cli.common import console, require_extra


def _int_list(text: str, name: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise typer.BadParameter("expected positive integers", param_hint=name)
    return values


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
            help="Modes a..g, i (in-process), j (judge), n (c with a call per candidate) and m "
            "(i with n=K requests), as listed above.",
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
        str | None,
        typer.Option(
            metavar="NAME",
            help="bestofk's selection.tie_break: `index` or `logprob` (the engine computes "
            "every sampled token's logprob); default: the server's.",
        ),
    ] = None,
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
    adaptive: Annotated[
        Path | None,
        typer.Option(
            "--adaptive",
            metavar="TASKS",
            help="Only adaptive compute: start an in-process bestofk and measure accuracy, "
            "tokens and p50 latency for each --k fixed, the largest with early exit and "
            "adaptive K on this task set (e.g. demo/tasks.jsonl), as `bestofk eval --adaptive`.",
        ),
    ] = None,
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
    from bestofk.service import server
    from bestofk.service.bundled_model import DEMO_MODEL
    from bestofk.service.selection import TieBreak
    from bestofk.tooling import bench as bench_lib
    from bestofk.tooling.bench.modes import ALL_MODES, WORKLOADS

    if plot_out is not None:
        require_extra("matplotlib", "plot", "--plot")
    chosen = [m.strip() for m in modes.split(",") if m.strip()]
    unknown = sorted(set(chosen) - set(ALL_MODES))
    if unknown:
        raise typer.BadParameter(f"unknown modes {unknown}; choose from {list(ALL_MODES)}")
    if workload not in WORKLOADS:
        raise typer.BadParameter(f"unknown workload {workload!r}; choose from {list(WORKLOADS)}")
    if tie_break is not None and tie_break not in get_args(TieBreak):
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
    if adaptive is not None:
        from bestofk.tooling import compute

        measured = compute.bench(
            str(model or DEMO_MODEL), adaptive, sorted(set(config.ks)), logs, log=console.print
        )
        typer.echo(measured.markdown(compute.configs(config.ks)[-2].name), nl=False)
        if json_out is not None:
            json_out.write_text(json.dumps(measured.to_json(), indent=2) + "\n")
        if plot_out is not None:
            compute.plot(measured, plot_out)
        return
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
