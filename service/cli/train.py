"""``bestofk train``: the next model from the recorded verdicts, with TRL (the ``train`` extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from bestofk.service.cli.common import console
from bestofk.service.cli.export import (
    MaxPairsOpt,
    MaxPerPromptOpt,
    MinMarginOpt,
    OnlyOpt,
    ProfileOpt,
    RecordsArg,
    SourceOpt,
    VerifierOpt,
    export_options,
)


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
            records=export_options(
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
