"""Appending every request's record to JSONL files, off the request path.

The request path only puts ``(job, result)`` on a bounded queue without waiting: when the
queue is full the record is dropped, counted (``bestofk_records_dropped_total{reason}``) and
logged, and the request goes on as if nothing happened. One writer thread builds each record,
serialises it and appends it to the current file:

- each record is one ``os.write`` of one complete line on an ``O_APPEND`` descriptor with no
  user-space buffer, so a reader sees whole records the moment they are written, and a killed
  server leaves at most one partial last line (which readers skip);
- a file is rotated when the next line would take it past ``max_bytes``; the finished file is
  fsync'd (and the directory, for the new name) before the next is used;
- at shutdown the queue is drained, then the file fsync'd and closed.

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
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from bestofk.service import metrics
from bestofk.service.records.format import build, compile_redactions

if TYPE_CHECKING:
    from bestofk.service.pipeline import RerankJob, RerankResult
    from bestofk.service.settings import Settings

log = logging.getLogger(__name__)

WARN_EVERY_S = 10.0
"""Drops are logged at most this often (with the count since), so a flood cannot fill the log."""


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
    ) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.redactions = compile_redactions(redact)
        self._queue: queue.Queue[_Pending | object] = queue.Queue(maxsize=queue_size)
        self._thread: threading.Thread | None = None
        self._closed = False
        self._fd: int | None = None
        self._size = 0
        self._sequence = 0
        self.path: Path | None = None
        """The file being written now (None before the first record)."""
        self._dropped_since_warning = 0
        self._last_warning = 0.0

    @classmethod
    def from_settings(cls, settings: Settings) -> Recorder:
        """A recorder configured by the ``record_*`` settings (``record_dir`` must be set)."""
        assert settings.record_dir is not None
        return cls(
            settings.record_dir,
            max_bytes=settings.record_max_bytes,
            queue_size=settings.record_queue_size,
            redact=settings.record_redact,
        )

    def start(self) -> None:
        """Create the directory and start the writer; fails now if it cannot be written."""
        self.directory.mkdir(parents=True, exist_ok=True)
        if not os.access(self.directory, os.W_OK | os.X_OK):
            raise PermissionError(f"the record directory {self.directory} is not writable")
        self._thread = threading.Thread(target=self._run, name="bestofk-recorder", daemon=True)
        self._thread.start()
        log.info("recording requests to %s", self.directory)

    def submit(self, job: RerankJob, result: RerankResult, profile: str | None = None) -> bool:
        """Queue one finished request for writing; never blocks. False if it was dropped."""
        if self._closed:
            self._drop("closed")
            return False
        try:
            self._queue.put_nowait(_Pending(job, result, profile, time.time()))
        except queue.Full:
            self._drop("queue_full")
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

    def _drop(self, reason: str) -> None:
        metrics.RECORDS_DROPPED.labels(reason).inc()
        self._dropped_since_warning += 1
        now = time.monotonic()
        if now - self._last_warning >= WARN_EVERY_S:
            log.warning(
                "dropped %d request record(s) (%s): the record writer is behind or stopped",
                self._dropped_since_warning,
                reason,
            )
            self._last_warning = now
            self._dropped_since_warning = 0

    def _run(self) -> None:
        try:
            while True:
                item = self._queue.get()
                if item is _STOP:
                    return
                assert isinstance(item, _Pending)
                try:
                    self._write(self._line(item))
                except Exception:  # a bad record or a full disk must not stop the writer
                    log.exception("could not write a request record")
                    self._drop("error")
                else:
                    metrics.RECORDS_WRITTEN.inc()
        finally:
            self._finish_file()

    def _line(self, item: _Pending) -> bytes:
        record = build(
            item.job,
            item.result,
            profile=item.profile,
            finished_at=item.finished_at,
            redactions=self.redactions,
        )
        return record.to_line()

    def _write(self, line: bytes) -> None:
        if self._fd is None or (self._size > 0 and self._size + len(line) > self.max_bytes):
            self._rotate()
        assert self._fd is not None
        view = memoryview(line)
        try:
            while view:  # a regular file takes it all in one write unless the disk is full
                written = os.write(self._fd, view)
                view = view[written:]
                self._size += written
        except OSError:
            if len(view) < len(line):
                # Part of the line is in the file: the next record goes to a fresh file, so
                # this partial line stays the last one here, where readers skip it.
                self._finish_file()
            raise

    def _rotate(self) -> None:
        self._finish_file()
        while True:
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
            path = self.directory / f"records-{stamp}Z-{os.getpid()}-{self._sequence:04d}.jsonl"
            self._sequence += 1
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
            except FileExistsError:
                continue
            break
        self._fd, self._size, self.path = fd, 0, path
        _fsync_dir(self.directory)  # the new name survives a crash along with its contents

    def _finish_file(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
