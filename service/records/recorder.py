"""Appending every request's record to JSONL files, off the request path.

The request path only puts ``(job, result)`` on a bounded queue without waiting: when the
queue is full the record is dropped, counted (``bestofk_records_dropped_total{reason}``) and
logged, and the request goes on as if nothing happened. One writer thread builds each record,
serialises it and appends it to the current file:

- each record is one ``os.write`` of one complete line on an ``O_APPEND`` descriptor with no
  user-space buffer, so a reader sees whole records the moment they are written, and a killed
  server leaves at most one partial last line (which readers skip);
- the file is fsync'd at most ``SYNC_EVERY_S`` after a line is written (one fsync a second
  under load), so a crash or a disk error loses at most the last second, not the page cache's
  half minute;
- a file is rotated when the next line would take it past ``max_bytes``; the finished file is
  fsync'd (and the directory, for the new name) before the next is used;
- at shutdown the queue is drained, then the file fsync'd and closed.

Storage faults do not stop serving, and are never silent:

- before each record the writer checks that the directory is still the one it opened the file
  in (a ``stat``: deleted, or replaced by a new directory or a mount), and after it that the
  file still has a name (``fstat``: a tmp cleaner or an ``rm -rf``). Either way it says so once
  in the log, recreates the directory if it is gone, and goes on in a fresh file; a line that
  went into a deleted file is written again there, so ``bestofk_records_written_total`` counts
  only lines that reached a file with a name;
- a failed write (no space, read-only, permission, I/O error) drops the record under its own
  reason and marks recording unhealthy (``bestofk_records_healthy``, ``/health``'s detail); the
  writer tries again with a fresh file after a backoff (``RETRY_FIRST_S`` doubling to
  ``RETRY_MAX_S``), dropping what comes meanwhile, and logs when recording resumed;
- drops of every reason are logged at most once per ``WARN_EVERY_S``, with their counts and the
  last error, so a flood of failures cannot flood the log.

File names are ``records-<UTC time>-<pid>-<n>.jsonl``: sorted names are write order, and
several worker processes can share one directory without sharing a file.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bestofk.service.metrics import Metrics
from bestofk.service.records.drops import WARN_EVERY_S, DropLog, Failure, drop_reason
from bestofk.service.records.format import MAX_RECORD_BYTES, build, compile_redactions
from bestofk.service.records.record_file import SYNC_EVERY_S, RecordFile

if TYPE_CHECKING:
    from bestofk.service.rerank import RerankJob, RerankResult
    from bestofk.service.settings import Settings

log = logging.getLogger(__name__)

RETRY_FIRST_S = 0.25
RETRY_MAX_S = 2.0
"""After a failed write the writer tries again after 0.25 s, then 0.5, 1 and every 2 s: at most
this long after the fault clears (space freed, remounted), recording resumes. A try costs a few
system calls (create, write, remove the empty file), so trying often costs nothing."""


@dataclass(frozen=True, slots=True)
class _Pending:
    job: RerankJob
    result: RerankResult
    profile: str | None
    finished_at: float


_STOP = object()


class Recorder:
    """A bounded queue of finished requests and the thread that writes them to ``directory``."""

    def __init__(
        self,
        directory: Path,
        max_bytes: int = 128 * 1024 * 1024,
        queue_size: int = 10_000,
        redact: Sequence[str] = (),
        metrics: Metrics | None = None,
    ) -> None:
        self.directory = directory
        self.metrics = metrics or Metrics()
        """Where writes, drops and health are counted: the app's; a recorder's own if None."""
        self.redactions = compile_redactions(redact)
        self._queue: queue.Queue[_Pending | object] = queue.Queue(maxsize=queue_size)
        self._thread: threading.Thread | None = None
        self._closed = False
        self._file = RecordFile(directory, max_bytes)
        self._drops = DropLog(self.metrics)
        self._failure: Failure | None = None
        self._traced = False

    @classmethod
    def from_settings(cls, settings: Settings, metrics: Metrics) -> Recorder:
        """A recorder configured by the ``record_*`` settings (``record_dir`` must be set),
        counting into the app's ``metrics``."""
        assert settings.record_dir is not None
        return cls(
            settings.record_dir,
            max_bytes=settings.record_max_bytes,
            queue_size=settings.record_queue_size,
            redact=settings.record_redact,
            metrics=metrics,
        )

    @property
    def max_bytes(self) -> int:
        """A file is rotated before a line would take it past this."""
        return self._file.max_bytes

    @property
    def path(self) -> Path | None:
        """The file being written now (None before the first record)."""
        return self._file.path

    def start(self) -> None:
        """Create the directory and start the writer; fails now if it cannot be written."""
        self.directory.mkdir(parents=True, exist_ok=True)
        if not os.access(self.directory, os.W_OK | os.X_OK):
            raise PermissionError(f"the record directory {self.directory} is not writable")
        self._set_healthy(True)
        self._thread = threading.Thread(target=self._run, name="bestofk-recorder", daemon=True)
        self._thread.start()
        log.info("recording requests to %s", self.directory)

    @property
    def failing(self) -> str | None:
        """Why recording fails now, in words for ``/health``; None while it works."""
        failure = self._failure
        if failure is None:
            return None
        return (
            f"recording to {self.directory} is failing ({failure.reason}: {failure.error}) for "
            f"{time.monotonic() - failure.since:.0f} s, {failure.dropped} record(s) dropped"
        )

    def submit(self, job: RerankJob, result: RerankResult, profile: str | None = None) -> bool:
        """Queue one finished request for writing; never blocks. False if it was dropped."""
        if self._closed:
            self._drops.drop("closed", "the recorder had stopped")
            return False
        try:
            self._queue.put_nowait(_Pending(job, result, profile, time.time()))
        except queue.Full:
            self._drops.drop("queue_full", "the record writer is behind")
            return False
        return True

    def close(self, timeout_s: float = 30.0) -> None:
        """Write what is queued, fsync and close the file. Blocking: call it off the loop."""
        if self._closed:
            return
        self._closed = True
        if self._thread is None:
            return
        # The writer is draining, so a full queue makes room; the timeout covers a stuck disk.
        try:
            self._queue.put(_STOP, timeout=timeout_s)
        except queue.Full:
            log.error("the record writer is stuck; %d records not written", self._queue.qsize())
            return
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.error("the record writer did not finish within %.0fs", timeout_s)

    def _run(self) -> None:
        try:
            while True:
                try:
                    item = self._queue.get(
                        timeout=SYNC_EVERY_S if self._file.unsynced else WARN_EVERY_S
                    )
                except queue.Empty:  # idle: the last lines go to the disk, pending drops to the log
                    self._file.sync(force=True)
                    self._drops.report(force=False)
                    continue
                if item is _STOP:
                    return
                assert isinstance(item, _Pending)
                self._save(item)
        finally:
            self._drops.report()
            self._file.abandon()

    def _save(self, item: _Pending) -> None:
        failure = self._failure
        if failure is not None and time.monotonic() < failure.retry_at:
            failure.dropped += 1
            self._drops.drop(failure.reason, failure.error)
            return
        try:
            line = self._line(item)
            if len(line) > MAX_RECORD_BYTES:
                self._drops.drop("too_large", f"a {len(line)}-byte record")
                return
        except Exception as exc:  # a record that cannot be built is a bug: trace it once
            if not self._traced:
                log.exception("could not build a request record")
                self._traced = True
            self._drops.drop("error", f"{type(exc).__name__}: {exc}")
            return
        try:
            self._file.append(line)
            self._file.sync(force=False)
        except OSError as exc:
            self._fail(exc)
            return
        self.metrics.record_written()
        if failure is not None:
            self._failure = None
            self._set_healthy(True)
            self._drops.report()
            log.warning(
                "recording to %s resumed after %.1f s (%d record(s) dropped meanwhile, %s)",
                self.directory,
                time.monotonic() - failure.since,
                failure.dropped,
                failure.reason,
            )

    def _fail(self, exc: OSError) -> None:
        reason, error = drop_reason(exc), f"{exc.strerror or exc}"
        now = time.monotonic()
        failure = self._failure
        if failure is None:
            failure = self._failure = Failure(reason, error, now, now, RETRY_FIRST_S)
            self._set_healthy(False)
        else:
            failure.reason, failure.error = reason, error
            failure.delay = min(failure.delay * 2, RETRY_MAX_S)
        failure.retry_at = now + failure.delay
        failure.dropped += 1
        self._drops.drop(reason, error)

    def _set_healthy(self, healthy: bool) -> None:
        self.metrics.records_healthy(self.directory, healthy)

    def _line(self, item: _Pending) -> bytes:
        record = build(
            item.job,
            item.result,
            profile=item.profile,
            finished_at=item.finished_at,
            redactions=self.redactions,
        )
        return record.to_line()
