"""The file the record writer appends to: opened in the directory as it is now, rotated, fsync'd.

One thread uses it, the recorder's writer (:mod:`bestofk.service.records.recorder`, whose
docstring says what each step guarantees): a line goes in one ``os.write`` on an ``O_APPEND``
descriptor; a directory deleted or replaced, or a file deleted under the writer, is logged once
and the writing goes on in a fresh file.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import time
from datetime import UTC, datetime
from pathlib import Path

from bestofk.service.records.drops import FileDeletedError

log = logging.getLogger(__name__)

SYNC_EVERY_S = 1.0
"""Written lines are fsync'd at most this long after they are written (a crash or a disk that
fails loses at most this much), and at rotation and shutdown."""


class RecordFile:
    """The record file being written in ``directory``, and the ones after it: a fresh one when
    the next line would take it past ``max_bytes``, or when it or its directory is gone."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self._fd: int | None = None
        self._size = 0
        self._lines = 0
        self.unsynced = False
        """Lines were written since the last fsync."""
        self._sync_due = 0.0
        self._sequence = 0
        self._directory_id: tuple[int, int] | None = None
        self.path: Path | None = None
        """The file being written now (None before the first record)."""

    def append(self, line: bytes) -> None:
        """Write ``line`` to a file that still has its name, or raise."""
        for _ in range(2):
            self._open_for(len(line))
            assert self._fd is not None
            self._write(self._fd, line)
            if os.fstat(self._fd).st_nlink > 0:
                self._lines += 1
                self.unsynced = True
                return
            # Deleted while we wrote (or before): the line is lost with it, so it goes again.
            log.warning(
                "the record file %s was deleted from outside bestofk with %d record(s) written "
                "to it; recording goes on in a fresh file",
                self.path,
                self._lines,
            )
            self.abandon()
        raise FileDeletedError(errno.ENOENT, "record files are deleted as they are written")

    def sync(self, force: bool) -> None:
        """fsync what was written since the last sync, at most every ``SYNC_EVERY_S`` unless
        ``force``: a crash or a disk error then loses at most that much of what was counted
        written, not the page cache's half minute. An idle sync that fails is left to the next
        write, which meets the same fault and counts it."""
        now = time.monotonic()
        if self._fd is None or not self.unsynced or (not force and now < self._sync_due):
            return
        try:
            os.fsync(self._fd)
        except OSError:
            if not force:
                raise
            self.abandon()
        self.unsynced = False
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
            self.abandon()
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
            self.abandon()
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
        fd, self._fd, self.unsynced = self._fd, None, False
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def abandon(self) -> None:
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
