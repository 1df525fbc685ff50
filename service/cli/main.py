"""The typer app: the commands, help without type placeholders, one-line expected failures."""

from __future__ import annotations

import sys
from typing import Any

import typer

from bestofk.service.cli import bench, evaluate, export, generate, serve, stats, train
from bestofk.service.cli.common import describe_error


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
app.command()(serve.serve)
app.command()(generate.generate)
app.command("eval")(evaluate.evaluate)
app.command()(bench.bench)
app.command()(export.export)
app.command()(stats.stats)
app.command()(train.train)


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
