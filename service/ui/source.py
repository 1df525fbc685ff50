"""Where the trace pages read requests: this process's recent ones, and the record files.

Every function here blocks (records are built, files read): the routes call them off the loop.
Each is bounded: a page of rows, at most :data:`SCAN_LIMIT` records read from the files for one
page or one stats table, newest first (:func:`records.reader.complete_lines_reversed` reads a
file from its end, so the newest records of a large directory cost only their own bytes).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from bestofk.service.history import History
from bestofk.service.records.format import Record, RecordFormatError
from bestofk.service.records.reader import complete_lines_reversed, parse_line, record_files
from bestofk.service.ui.listing import Filters, Summary, summary

Origin = Literal["recent", "records"]
PAGE_SIZE = 50
SCAN_LIMIT = 20_000
"""Records read from the files for one page (of filtered rows) or one stats table."""
FIND_LIMIT = 500_000
"""Lines of the files searched for one request id, newest first (only matching lines parse)."""


@dataclass(slots=True)
class Scan:
    """What a read of the files met besides records."""

    read: int = 0
    unreadable: int = 0
    """Lines that did not parse (corruption; ``bestofk stats`` would stop at them)."""
    truncated: bool = False
    """The scan stopped at :data:`SCAN_LIMIT` records: older ones were not read."""


@dataclass(slots=True)
class Page:
    """One page of the request list."""

    rows: list[Summary]
    page: int
    more: bool
    """Another page follows."""
    scan: Scan = field(default_factory=Scan)
    models: list[str] = field(default_factory=list)
    profiles: list[str] = field(default_factory=list)
    """The values seen while reading, for the filter menus."""


class Source:
    """The records behind the pages: the in-memory history and, with ``record_dir``, the files."""

    def __init__(self, history: History | None, record_dir: Path | None) -> None:
        self.history = history
        self.record_dir = record_dir

    def newest(self, origin: Origin, scan: Scan) -> Iterator[Record]:
        """Records newest first, from memory or from the files (up to :data:`SCAN_LIMIT`)."""
        if origin == "recent":
            yield from self.history.records() if self.history is not None else ()
            return
        if self.record_dir is None:
            return
        try:
            files = record_files(self.record_dir)
        except FileNotFoundError:  # nothing recorded yet
            return
        for file in reversed(files):
            for offset, line in complete_lines_reversed(file):
                if scan.read >= SCAN_LIMIT:
                    scan.truncated = True
                    return
                scan.read += 1
                try:
                    yield parse_line(line, f"{file} at byte {offset}")
                except RecordFormatError:
                    scan.unreadable += 1

    def page(self, origin: Origin, filters: Filters, page: int) -> Page:
        """Rows ``page * PAGE_SIZE`` onwards of the records ``filters`` let through."""
        scan = Scan()
        rows: list[Summary] = []
        models: set[str] = set()
        profiles: set[str] = set()
        skip = page * PAGE_SIZE
        more = False
        for record in self.newest(origin, scan):
            models.add(record.model)
            profiles.add(record.profile or "-")
            if not filters.match(record):
                continue
            if skip:
                skip -= 1
            elif len(rows) < PAGE_SIZE:
                rows.append(summary(record))
            else:
                more = True
                break
        return Page(rows, page, more, scan, sorted(models), sorted(profiles))

    def find(self, request_id: str) -> Record | None:
        """``request_id``'s record: from memory, else the newest file line that holds it."""
        if self.history is not None and (record := self.history.find(request_id)):
            return record
        if self.record_dir is None:
            return None
        # Writers use compact JSON, and a quote inside a string is escaped: a record's own id
        # is the only place this key and value can meet; a message's "id" is checked below.
        needle = f'"id":"{request_id}"'.encode()
        try:
            files = record_files(self.record_dir)
        except FileNotFoundError:
            return None
        searched = 0
        for file in reversed(files):
            for offset, line in complete_lines_reversed(file):
                searched += 1
                if searched > FIND_LIMIT:
                    return None
                if needle in line:
                    try:
                        record = parse_line(line, f"{file} at byte {offset}")
                    except RecordFormatError:
                        continue
                    if record.id == request_id:
                        return record
        return None
