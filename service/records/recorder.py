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

import contextlib
import errno
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

from bestofk.service.metrics import Metrics
from bestofk.service.records.format import MAX_RECORD_BYTES, build, compile_redactions

if TYPE_CHECKING:
    from bestofk.service.rerank import RerankJob, RerankResult
    from bestofk.service.settings import Settings

log = logging.getLogger(__name__)

SYNC_EVERY_S = 1.0
"""Written lines are fsync'd at most this long after they are written (a crash or a disk that
fails loses at most this much), and at rotation and shutdown."""
WARN_EVERY_S = 10.0
"""Drops are logged at most this often (with the count since), so a flood cannot fill the log."""
RETRY_FIRST_S = 0.25
RETRY_MAX_S = 2.0
"""After a failed write the writer tries again after 0.25 s, then 0.5, 1 and every 2 s: at most
this long after the fault clears (space freed, remounted), recording resumes. A try costs a few
system calls (create, write, remove the empty file), so trying often costs nothing."""

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


@dataclass(frozen=True, slots=True)
class _Pending:
    job: RerankJob
    result: RerankResult
    profile: str | None
    finished_at: float


@dataclass(slots=True)
class _Failure:
    """Recording is failing: since when, why, and when to try again."""

    reason: str
    error: str
    since: float
    retry_at: float
    delay: float
    dropped: int = 0


class _DropLog:
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
        self.max_bytes = max_bytes
        self.redactions = compile_redactions(redact)
        self._queue: queue.Queue[_Pending | object] = queue.Queue(maxsize=queue_size)
        self._thread: threading.Thread | None = None
        self._closed = False
        self._fd: int | None = None
        self._size = 0
        self._lines = 0
        self._unsynced = False
        self._sync_due = 0.0
        self._sequence = 0
        self._directory_id: tuple[int, int] | None = None
        self.path: Path | None = None
        """The file being written now (None before the first record)."""
        self._drops = _DropLog(self.metrics)
        self._failure: _Failure | None = None
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
                    item = self._queue.get(timeout=SYNC_EVERY_S if self._unsynced else WARN_EVERY_S)
                except queue.Empty:  # idle: the last lines go to the disk, pending drops to the log
                    self._sync(force=True)
                    self._drops.report(force=False)
                    continue
                if item is _STOP:
                    return
                assert isinstance(item, _Pending)
                self._save(item)
        finally:
            self._drops.report()
            self._abandon_file()

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
            self._append(line)
            self._sync(force=False)
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
            failure = self._failure = _Failure(reason, error, now, now, RETRY_FIRST_S)
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

    def _append(self, line: bytes) -> None:
        """Write ``line`` to a file that still has its name, or raise."""
        for _ in range(2):
            self._open_for(len(line))
            assert self._fd is not None
            self._write(self._fd, line)
            if os.fstat(self._fd).st_nlink > 0:
                self._lines += 1
                self._unsynced = True
                return
            # Deleted while we wrote (or before): the line is lost with it, so it goes again.
            log.warning(
                "the record file %s was deleted from outside bestofk with %d record(s) written "
                "to it; recording goes on in a fresh file",
                self.path,
                self._lines,
            )
            self._abandon_file()
        raise FileDeletedError(errno.ENOENT, "record files are deleted as they are written")

    def _sync(self, force: bool) -> None:
        """fsync what was written since the last sync, at most every ``SYNC_EVERY_S`` unless
        ``force``: a crash or a disk error then loses at most that much of what was counted
        written, not the page cache's half minute. An idle sync that fails is left to the next
        write, which meets the same fault and counts it."""
        now = time.monotonic()
        if self._fd is None or not self._unsynced or (not force and now < self._sync_due):
            return
        try:
            os.fsync(self._fd)
        except OSError:
            if not force:
                raise
            self._abandon_file()
        self._unsynced = False
        self._sync_due = now + SYNC_EVERY_S

    def _open_for(self, size: int) -> None:
        """Make ``self._fd`` a file in the directory as it is now, with room for ``size``."""
        try:
            stat = os.stat(self.directory)
        except FileNotFoundError:
            stat = None
        found = None if stat is None else (stat.st_dev, stat.st_ino)
        if self._directory_id is not None and found != self._directory_id:
            log.warning(
                "the record directory %s was %s while recording (the last file, %s, has %d "
                "record(s)); recording goes on in a fresh file in %s",
                self.directory,
                "deleted" if stat is None else "replaced",
                self.path,
                self._lines,
                "it, recreated" if stat is None else "the new one",
            )
            self._abandon_file()
            self._directory_id = None
        if stat is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            stat = os.stat(self.directory)
            found = (stat.st_dev, stat.st_ino)
        if self._fd is None or (self._size > 0 and self._size + size > self.max_bytes):
            self._rotate()
        self._directory_id = found

    def _write(self, fd: int, line: bytes) -> None:
        view = memoryview(line)
        try:
            while view:  # a regular file takes it all in one write unless the disk is full
                written = os.write(fd, view)
                view = view[written:]
                self._size += written
        except OSError:
            # Part of the line may be in the file: the next record goes to a fresh file, so a
            # partial line stays the last one here, where readers skip it.
            self._abandon_file()
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
        self._fd, self._size, self._lines, self.path = fd, 0, 0, path
        _fsync_dir(self.directory)  # the new name survives a crash along with its contents

    def _finish_file(self) -> None:
        """fsync and close the current file; a failure to do so raises (after closing)."""
        if self._fd is None:
            return
        fd, self._fd, self._unsynced = self._fd, None, False
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _abandon_file(self) -> None:
        """Close the current file whatever the disk says; an empty one is removed."""
        if self._fd is None:
            return
        empty, path = self._size == 0, self.path
        try:
            self._finish_file()
        except OSError as exc:
            log.debug("closing %s: %s", path, exc)
        if empty and path is not None:
            # Gone with its directory, or on a read-only disk: then there is nothing to tidy.
            with contextlib.suppress(OSError):
                path.unlink()


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
