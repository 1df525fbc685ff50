"""Reading record files back: one file or a directory of rotated ones, while being written.

The writer appends each record as one complete line in one ``write``, so a reader that stops
at the last newline sees only whole records. A line without its newline is the end of a file
still being written, or of one whose writer was killed mid-write: it is skipped, never parsed.
Any complete line that does not parse is corruption and raises, naming the file and line.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from bestofk.service.records.format import Record, RecordFormatError

PATTERN = "*.jsonl"


def record_files(path: Path) -> list[Path]:
    """``path`` itself, or every ``.jsonl`` file under a directory, oldest name first.

    Record file names start with their UTC creation time, so name order is write order.
    """
    if path.is_dir():
        return sorted(p for p in path.rglob(PATTERN) if p.is_file())
    if path.is_file():
        return [path]
    raise FileNotFoundError(f"no record file or directory at {path}")


def complete_lines(file: Path) -> Iterator[tuple[int, bytes]]:
    """(line number, line) for each newline-terminated line; a trailing partial one is skipped."""
    with file.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.endswith(b"\n"):
                return  # only the last line can lack its newline: a write in progress
            if line.strip():
                yield number, line


def read_file(file: Path) -> Iterator[Record]:
    """Every complete record in one file."""
    for number, line in complete_lines(file):
        try:
            raw = json.loads(line)
            if not isinstance(raw, dict):
                raise RecordFormatError("a record is a JSON object")
            yield Record.from_dict(raw)
        except (ValueError, RecordFormatError) as exc:
            raise RecordFormatError(f"{file}:{number}: {exc}") from None


def read_records(path: Path) -> Iterator[Record]:
    """Every complete record in a file or a directory of record files, in write order."""
    for file in record_files(path):
        yield from read_file(file)
