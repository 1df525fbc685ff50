"""Reading record files back: one file or a directory of rotated ones, while being written.

The writer appends each record as one complete line in one ``write``, so a reader that stops
at the last newline sees only whole records. A line without its newline is the end of a file
still being written, or of one whose writer was killed mid-write: it is skipped, never parsed.
Any complete line that does not parse is corruption and raises, naming the file and line.
"""

from __future__ import annotations

import json
import os
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


def complete_lines_reversed(file: Path, block: int = 1 << 16) -> Iterator[tuple[int, bytes]]:
    """(byte offset, line) for each newline-terminated line, the last first, reading the file
    backwards a block at a time (the newest records of a large file cost only their bytes); a
    trailing partial line is skipped, as :func:`complete_lines` does."""
    with file.open("rb") as handle:
        end = handle.seek(0, os.SEEK_END)
        # Only what ends in the file's last newline is complete.
        while end > 0:
            start = max(0, end - block)
            handle.seek(start)
            newline = handle.read(end - start).rfind(b"\n")
            if newline >= 0:
                end = start + newline + 1
                break
            end = start
        rest = b""
        position = end
        while position > 0:
            start = max(0, position - max(block, len(rest)))  # a long line: read more at once
            handle.seek(start)
            # What is read ends with a newline, so the last piece is empty; the first may begin
            # in the stretch before, unless this one starts the file.
            pieces = (handle.read(position - start) + rest).split(b"\n")
            head, found = pieces[0], []
            offset = start + len(head) + 1
            for line in pieces[1:-1]:
                found.append((offset, line))
                offset += len(line) + 1
            yield from ((o, line + b"\n") for o, line in reversed(found) if line.strip())
            rest = head + b"\n"
            position = start
        if rest.strip():
            yield 0, rest


def parse_line(line: bytes, where: str) -> Record:
    """One record line; ``where`` names it in the error (``FILE:LINE``)."""
    try:
        raw = json.loads(line)
        if not isinstance(raw, dict):
            raise RecordFormatError("a record is a JSON object")
        return Record.from_dict(raw)
    except (ValueError, RecordFormatError) as exc:
        raise RecordFormatError(f"{where}: {exc}") from None


def read_file(file: Path) -> Iterator[Record]:
    """Every complete record in one file."""
    for number, line in complete_lines(file):
        yield parse_line(line, f"{file}:{number}")


def read_records(path: Path) -> Iterator[Record]:
    """Every complete record in a file or a directory of record files, in write order."""
    for file in record_files(path):
        yield from read_file(file)
