"""Records lost, and why: the reason each is counted under, and the log of drops.

The recorder drops a record rather than stop serving (:mod:`bestofk.service.records.recorder`):
every drop is counted under its reason (``bestofk_records_dropped_total{reason}``) and logged at
most once per ``WARN_EVERY_S``, and while writes fail the recorder keeps a :class:`Failure` (why,
since when, when to try again) for ``/health``.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bestofk.service.metrics import Metrics

log = logging.getLogger(__name__)

WARN_EVERY_S = 10.0
"""Drops are logged at most this often (with the count since), so a flood cannot fill the log."""

_REASONS = {
    errno.ENOSPC: "no_space",
    errno.EDQUOT: "no_space",
    errno.EROFS: "read_only",
    errno.EACCES: "permission",
    errno.EPERM: "permission",
}


def drop_reason(exc: BaseException) -> str:
    """The ``reason`` label a record lost to ``exc`` is counted under."""
    if isinstance(exc, FileDeletedError):
        return "deleted"
    if isinstance(exc, OSError) and exc.errno is not None:
        return _REASONS.get(exc.errno, "error")
    return "error"


class FileDeletedError(OSError):
    """Two fresh files in a row lost their name while a line was written: something deletes
    record files as fast as they are made."""


@dataclass(slots=True)
class Failure:
    """Recording is failing: since when, why, and when to try again."""

    reason: str
    error: str
    since: float
    retry_at: float
    delay: float
    dropped: int = 0


class DropLog:
    """Counts drops by reason and logs them at most once per ``WARN_EVERY_S``; thread-safe
    (the request path drops on a full queue, the writer on a failed write)."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}
        self._errors: dict[str, str] = {}
        self._last = -WARN_EVERY_S

    def drop(self, reason: str, error: str) -> None:
        """Count one record dropped for ``reason`` (``error`` says why, in words)."""
        self._metrics.record_dropped(reason)
        with self._lock:
            self._counts[reason] = self._counts.get(reason, 0) + 1
            self._errors[reason] = error
        self.report(force=False)

    def report(self, force: bool = True) -> None:
        """Log the drops not logged yet: now if ``force``, else only once the interval passed."""
        with self._lock:
            now = time.monotonic()
            if not self._counts or (not force and now - self._last < WARN_EVERY_S):
                return
            counts, errors = self._counts, self._errors
            self._counts, self._errors, self._last = {}, {}, now
        log.warning(
            "dropped %d request record(s): %s",
            sum(counts.values()),
            "; ".join(f"{n} {reason} ({errors[reason]})" for reason, n in counts.items()),
        )
