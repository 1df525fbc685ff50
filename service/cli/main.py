"""The typer app: the commands, help without type placeholders, one-line expected failures."""

from __future__ import annotations

import sys
from typing import Any

import typer

from bestofk.service.cli import bench, evaluate, export, generate, serve, stats, train
from bestofk.service.cli.common import describe_error


class _Group(typer.core.TyperGroup):
    """Help without typer's type placeholders (``<str>``, ``<bool>``): options name their
    value (``--url URL``), arguments their metavar, and flags take none; the root's own
    options (``--install-completion``, ``--help``) as each command's."""

    def get_params(self, ctx: Any) -> list[Any]:  # typer's vendored click types
        params: list[Any] = super().get_params(ctx)
        _without_types(params)
        return params

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            _without_types([*command.params, command.get_help_option(ctx)])
        return command


def _without_types(params: list[Any]) -> None:
    for param in params:
        if isinstance(param, typer.core.TyperArgument) or getattr(param, "is_flag", False):
            param.display_type_rich = _no_type


def _no_type(ctx: object) -> None:
    return None


# Markdown, not rich markup: help reads as the docstrings' paragraphs at any width (rich
# markup mode keeps their line breaks), and square brackets stay text (`bestofk[train]`).
app = typer.Typer(
    cls=_Group,
    help="Best-of-K reranking server for LLMs.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
)
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
