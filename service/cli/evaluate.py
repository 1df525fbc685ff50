"""``bestofk eval``: best-of-k accuracy over a task set, per selection policy and signal."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, get_args

import typer

from bestofk.service.cli.client import ApiKeyOption, ModelOption, Target, UrlOption, client
from bestofk.service.cli.common import console, require_extra

if TYPE_CHECKING:
    from bestofk.service.selection import Policy


def evaluate(
    tasks: Annotated[
        Path, typer.Argument(metavar="TASKS", help="Task set (JSONL), e.g. demo/tasks.jsonl.")
    ],
    k: Annotated[
        str | None,
        typer.Option(
            metavar="K,...", help="K values (default 1,2,4,8,16; 1,2,4,8 with --adaptive)."
        ),
    ] = None,
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
    adaptive: Annotated[
        bool,
        typer.Option(
            "--adaptive",
            help="Instead: accuracy against generated tokens and p50 latency for each K fixed, "
            "the largest K with early exit, and adaptive K (real requests, one at a time).",
        ),
    ] = False,
) -> None:
    """pass@1, pass@k and best-of-k per policy, per task family and overall; or, with
    --adaptive, what each way of spending compute buys."""
    from bestofk.service.selection import Policy
    from bestofk.tooling import evaluation

    if plot_out is not None:
        require_extra("matplotlib", "plot", "--plot")

    ks = sorted({int(x) for x in (k or ("1,2,4,8" if adaptive else "1,2,4,8,16")).split(",")})
    sampling = {"temperature": temperature, "max_tokens": max_tokens, "seed": seed}
    target = Target(url, model, api_key)
    if adaptive:
        _compute(
            evaluation.load_tasks(tasks, family or ()), ks, sampling, target, json_out, plot_out
        )
        return
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
    samples, skipped = asyncio.run(_collect(task_list, max(ks), signal_list, sampling, target))
    report = evaluation.summarise(samples, ks, policies, signal_list)
    report.skipped = skipped
    _print_report(report)
    if json_out is not None:
        json_out.write_text(json.dumps(report.to_json(), indent=2))
    if plot_out is not None:
        evaluation.plot(report, plot_out)


def _compute(
    tasks: Any,
    ks: list[int],
    sampling: dict[str, Any],
    target: Target,
    json_out: Path | None,
    plot_out: Path | None,
) -> None:
    from rich.markup import escape

    from bestofk.tooling import compute

    plan = compute.configs(ks)
    report = asyncio.run(_measure(tasks, plan, sampling, target))
    against = plan[-2].name  # the largest K with early exit
    typer.echo(report.markdown(against), nl=False)  # plain: rich would wrap the table's rows
    for family, reason in report.skipped.items():
        console.print(f"[yellow]skipped[/yellow] {escape(family)}: {escape(reason)}")
    if json_out is not None:
        json_out.write_text(json.dumps(report.to_json(), indent=2) + "\n")
    if plot_out is not None:
        compute.plot(report, plot_out)


async def _measure(tasks: Any, plan: Any, sampling: dict[str, Any], target: Target) -> Any:
    from rich.console import Console
    from rich.progress import Progress

    from bestofk.tooling import compute

    async with client(target) as http:
        with Progress(console=Console(stderr=True)) as progress:
            bar = progress.add_task("measuring", total=len(tasks))
            return await compute.measure(
                http, tasks, plan, sampling, on_done=lambda: progress.advance(bar)
            )


async def _collect(
    tasks: Any,
    n: int,
    signals: list[str],
    sampling: dict[str, Any],
    target: Target,
) -> Any:
    from rich.console import Console
    from rich.progress import Progress

    from bestofk.tooling import evaluation

    async with client(target) as http:
        with Progress(console=Console(stderr=True)) as progress:
            bar = progress.add_task("sampling", total=len(tasks))
            return await evaluation.collect(
                http, tasks, n, signals, sampling, on_done=lambda: progress.advance(bar)
            )


def _print_report(report: Any) -> None:
    from rich.markup import escape
    from rich.table import Table

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
            *(f"{row['tokens_per_request'][k]:.0f}" for k in report.ks),
        )  # fmt: skip
        table.add_row(
            "", "", "", "of which thinking",
            *(f"{row['thinking_tokens_per_request'][k]:.0f}" for k in report.ks),
            end_section=True,
        )  # fmt: skip
    console.print(table)
    for family, reason in report.skipped.items():
        console.print(f"[yellow]skipped[/yellow] {escape(family)}: {escape(reason)}")
