"""``bestofk stats``: pass@1 against pass@K in the records, per profile and verifier."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

import typer

from bestofk.service.cli.common import console
from bestofk.service.cli.export import RecordsArg


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
    from bestofk.service.records.reader import read_records
    from bestofk.tooling.records import stats as record_stats

    report = record_stats.compute(read_records(records), source=source)
    text = json.dumps(report.to_dict(), indent=2)
    if json_out is not None and str(json_out) == "-":
        print(text)  # only the JSON on stdout, for a pipe
        return
    console.print(record_stats.render(report))
    if json_out is not None:
        json_out.write_text(text + "\n")
