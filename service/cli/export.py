"""``bestofk export``: recorded verdicts into a TRL dataset; the record filters ``train`` shares."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer

from bestofk.service.cli.common import console

if TYPE_CHECKING:
    from bestofk.tooling.records.export import ExportOptions

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


def export_options(
    fmt: Literal["dpo", "rsft", "kto"],
    min_margin: float,
    max_pairs: int,
    max_per_prompt: int | None,
    only: Literal["text", "chat"] | None,
    source: Literal["generate", "verify", "all"],
    profile: list[str] | None,
    verifier: list[str] | None,
) -> ExportOptions:
    """The flags' :class:`ExportOptions` (``--source all``: no source filter)."""
    from bestofk.tooling.records.export import ExportOptions

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
    from bestofk.service.records.reader import read_records
    from bestofk.tooling.records.export import export as export_records
    from bestofk.tooling.records.export import write_jsonl

    options = export_options(
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
