"""The recent requests the trace pages show: a bounded ring of finished requests, in memory.

:meth:`Runtime._finished <bestofk.service.runtime.Runtime>` adds each finished request here, as
it hands it to the recorder; adding is an append, all the request path pays. The record an
entry becomes (:func:`records.format.build`: plain data, the prompt redacted as ``record_redact``
says) is built when a page first needs it, off the event loop, and kept in place of the result.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING

from bestofk.service.records.format import Record, build, compile_redactions

if TYPE_CHECKING:
    from bestofk.service.rerank import RerankJob, RerankResult


class _Entry:
    __slots__ = ("finished_at", "job", "profile", "record", "request_id", "result")

    def __init__(self, job: RerankJob, result: RerankResult, profile: str | None) -> None:
        self.request_id = result.request_id
        self.job: RerankJob | None = job
        self.result: RerankResult | None = result
        self.profile = profile
        self.finished_at = time.time()
        self.record: Record | None = None


class History:
    """The last ``size`` finished requests of this process, newest first."""

    def __init__(self, size: int, redact: Sequence[str] = ()) -> None:
        self.size = size
        self.redactions = compile_redactions(redact)
        self._ring: deque[_Entry] = deque(maxlen=size)
        # Pages read the ring from worker threads while the loop appends to it.
        self._lock = threading.Lock()
        self._building = threading.Lock()
        """Held while an entry's record is built: two pages must not build the same one."""

    def add(self, job: RerankJob, result: RerankResult, profile: str | None) -> None:
        """Keep one finished request (the oldest goes once ``size`` are kept); never blocks
        for long: an append under a lock that readers hold only to copy the ring."""
        if self.size:
            entry = _Entry(job, result, profile)
            with self._lock:
                self._ring.append(entry)

    def __len__(self) -> int:
        return len(self._ring)

    def records(self) -> list[Record]:
        """Every kept request as its record, newest first. Builds records not built yet:
        blocking work, call it off the loop."""
        with self._lock:
            entries = list(self._ring)
        return [self._record(e) for e in reversed(entries)]

    def find(self, request_id: str) -> Record | None:
        """The record of ``request_id`` if it is still kept (blocking, as :meth:`records`)."""
        with self._lock:
            found = [e for e in self._ring if e.request_id == request_id]
        return self._record(found[-1]) if found else None

    def _record(self, entry: _Entry) -> Record:
        with self._building:
            if entry.record is None:
                assert entry.job is not None and entry.result is not None
                entry.record = build(
                    entry.job,
                    entry.result,
                    profile=entry.profile,
                    finished_at=entry.finished_at,
                    redactions=self.redactions,
                )
                # The record holds what the pages show; the result (logprobs too) can go.
                entry.job = entry.result = None
            return entry.record
