"""Reading record files back: one file or a directory of rotated ones, while being written.

The writer appends each record as one complete line in one ``write``, so a reader that stops
at the last newline sees only whole records. A line without its newline is the end of a file
still being written, or of one whose writer was killed mid-write: it is skipped, never parsed.

A complete line that is not a record (binary junk, JSON of another shape, a line longer than
any record, which is skipped without being loaded) is damage: :class:`RecordReader` skips it
and counts it with its file and line, or with ``strict`` raises on the first, naming both.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from bestofk.service.records.format import MAX_RECORD_BYTES, Record, RecordFormatError

PATTERN = "*.jsonl"
EXAMPLES = 10
"""How many skipped lines a reader keeps (file, line, why) to show; it counts them all."""
_CHUNK = 1 << 20


def record_files(path: Path) -> list[Path]:
    """``path`` itself, or every ``.jsonl`` file under a directory, oldest name first.

    Record file names start with their UTC creation time, so name order is write order.
    """
    if path.is_dir():
        return sorted(p for p in path.rglob(PATTERN) if p.is_file())
    if path.is_file():
        return [path]
    raise FileNotFoundError(f"no record file or directory at {path}")


def complete_lines(file: Path) -> Iterator[tuple[int, bytes | None]]:
    """(line number, line) for each newline-terminated line that is not blank; the line is
    None when it is longer than ``MAX_RECORD_BYTES`` (it is read past, never held whole). A
    trailing partial line is skipped."""
    with file.open("rb") as handle:
        number = 0
        while True:
            line = handle.readline(MAX_RECORD_BYTES + 1)
            number += 1
            if not line.endswith(b"\n"):
                if len(line) <= MAX_RECORD_BYTES or not _read_past_line(handle):
                    return  # only the last line can lack its newline: a write in progress
                yield number, None
            elif line.strip():
                yield number, line


def _read_past_line(handle: BinaryIO) -> bool:
    """Read to the end of the current line; False if the file ends first."""
    while chunk := handle.readline(_CHUNK):
        if chunk.endswith(b"\n"):
            return True
    return False


@dataclass(frozen=True, slots=True)
class Skipped:
    """A complete line that is not a record."""

    file: Path
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"


@dataclass(slots=True)
class RecordReader:
    """Every record in a file or a directory of record files, in write order.

    Lines that are not records are skipped and counted (``skipped``, the first few kept in
    ``examples``); with ``strict`` the first one raises :class:`RecordFormatError` instead.
    """

    path: Path
    strict: bool = False
    skipped: int = 0
    examples: list[Skipped] = field(default_factory=list)

    def __iter__(self) -> Iterator[Record]:
        self.skipped, self.examples = 0, []
        for file in record_files(self.path):
            for number, line in complete_lines(file):
                try:
                    if line is None:
                        raise RecordFormatError(
                            f"a line over {MAX_RECORD_BYTES >> 20} MiB, longer than any record"
                        )
                    yield Record.from_json(line)
                except RecordFormatError as exc:
                    skipped = Skipped(file, number, str(exc))
                    if self.strict:
                        raise RecordFormatError(str(skipped)) from None
                    self.skipped += 1
                    if len(self.examples) < EXAMPLES:
                        self.examples.append(skipped)

    def summary(self) -> str | None:
        """What was skipped, in a few lines for the user; None when nothing was."""
        if not self.skipped:
            return None
        lines = [
            f"skipped {self.skipped} line(s) that are not records (--strict stops at the first):",
            *(f"  {example}" for example in self.examples),
        ]
        if self.skipped > len(self.examples):
            lines.append(f"  … and {self.skipped - len(self.examples)} more")
        return "\n".join(lines)


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
    if len(line) > MAX_RECORD_BYTES:
        raise RecordFormatError(f"{where}: a line over {MAX_RECORD_BYTES >> 20} MiB")
    try:
        return Record.from_json(line)
    except RecordFormatError as exc:
        raise RecordFormatError(f"{where}: {exc}") from None


def read_records(path: Path) -> Iterator[Record]:
    """Every record in a file or a directory of record files, in write order; the first line
    that is not a record raises (:class:`RecordReader` skips and counts them)."""
    yield from RecordReader(path, strict=True)
