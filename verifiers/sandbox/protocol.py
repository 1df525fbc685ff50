"""What travels between the service and the sandbox driver, and the service's parser for it.

Three pipes per run (the driver's side is :mod:`bestofk.verifiers.sandbox.driver`):

- JOB (service → driver): one marshalled dict (``mode``, ``code``, ``entry``, ``calls`` as
  ``[args, kwargs]`` pairs, ``stdin``, ``timeout``, ``budget``). Expected values and expected
  stdout are never in it: :func:`driver_payload` is the one place a job is serialised.
- TESTS (service → test runner): the ``tests`` source, UTF-8. Empty outside tests mode.
- RESULT (driver → service): one JSON object per line, in this order:

  ===========================================================  ===============================
  ``{"t": "names", "names": "test_a\\ntest_b"}``                tests mode: the tests, in order
  ``{"t": "test", "i": 0, "status": "ok", "us": 812, "data": …}``  one per test, in order
  ``{"t": "fatal", "data": …}``                                 tests mode: the tests never ran
  ``{"t": "done", "n": 2}``                                     completion: ``n`` test records
  ===========================================================  ===============================

  ``data`` is text: the tagged-JSON return value (calls, status ``ok``), the stdout (io,
  ``ok``), or a flat JSON object (``type``, ``msg``, ``line``). A run counts only with its
  ``done`` record, since exit codes and stdout are the candidate's to forge.
"""

from __future__ import annotations

import json
import marshal
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from bestofk.verifiers.sandbox.driver import (
    MAX_MESSAGE,
    MAX_STDOUT,
    Malformed,
    Opaque,
    decode_value,
)

__all__ = [
    "MAX_RUN_S",
    "CallCase",
    "IoCase",
    "Job",
    "Malformed",
    "Opaque",
    "ProtocolError",
    "Record",
    "RecordParser",
    "decode_value",
    "driver_payload",
]

MAX_RUN_S = 60.0
"""Wall budget of one run however many tests it has; tests past it are reported as not run."""
STATUSES = frozenset(
    (
        "ok",
        "fail",
        "exception",
        "syntax",
        "noentry",
        "timeout",
        "memory",
        "crash",
        "output",
        "skipped",
    )
)
MAX_LINE = 6 * max(MAX_MESSAGE, MAX_STDOUT) + 4096
"""The longest record: a capped payload with every byte escaped as ``\\u00XX``."""


class ProtocolError(Exception):
    """The driver's records are not well formed (a bug, or a sandbox that was subverted)."""


@dataclass(frozen=True, slots=True)
class CallCase:
    """Call the entry point with ``args`` and ``kwargs``; the result must equal ``expected``."""

    args: Sequence[Any] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    expected: Any = None


@dataclass(frozen=True, slots=True)
class IoCase:
    """Run the program with ``stdin``; its stdout must equal ``stdout`` (trailing blanks aside)."""

    stdin: str
    stdout: str


@dataclass(frozen=True, slots=True)
class Job:
    """One candidate's code and the tests to run on it; exactly one of calls, io, tests."""

    code: str
    timeout_s: float
    entry_point: str = ""
    calls: Sequence[CallCase] = ()
    io: Sequence[IoCase] = ()
    tests: str = ""

    @property
    def mode(self) -> Literal["call", "io", "tests"]:
        """Which kind of tests the job carries."""
        if self.tests:
            return "tests"
        return "io" if self.io else "call"

    @property
    def budget_s(self) -> float:
        """Wall time the driver may spend: every test's timeout plus one for loading."""
        count = len(self.calls) or len(self.io) or max(1, self.tests.count("def test_"))
        return min(self.timeout_s * (count + 1), MAX_RUN_S)


def driver_payload(job: Job) -> bytes:
    """The JOB pipe's content. Expected values are left out here, and only here."""
    return marshal.dumps(
        {
            "mode": job.mode,
            "code": job.code,
            "entry": job.entry_point,
            "calls": [[list(case.args), dict(case.kwargs)] for case in job.calls],
            "stdin": [case.stdin for case in job.io],
            "timeout": float(job.timeout_s),
            "budget": float(job.budget_s),
        }
    )


@dataclass(frozen=True, slots=True)
class Record:
    """One test's outcome as the driver reported it."""

    index: int
    status: str
    micros: int
    data: str

    def info(self) -> dict[str, Any]:
        """The data as a JSON object ({} when it is not one)."""
        try:
            info = json.loads(self.data)
        except (ValueError, RecursionError):
            return {}
        return info if isinstance(info, dict) else {}

    def value(self) -> Any:
        """The call's return value as plain data; raises Malformed when it is not."""
        try:
            return decode_value(json.loads(self.data))
        except (ValueError, RecursionError):
            raise Malformed("result is not JSON") from None


@dataclass(slots=True)
class RecordParser:
    """Incremental parser of the RESULT pipe; :meth:`feed` raises ProtocolError on bad lines."""

    expected: int | None
    """How many test records a call or io job must produce (tests mode: from ``names``)."""
    records: list[Record] = field(default_factory=list)
    names: list[str] | None = None
    fatal: dict[str, Any] | None = None
    done: bool = False
    _buf: bytearray = field(default_factory=bytearray)

    def feed(self, data: bytes) -> None:
        """Take more bytes from the pipe."""
        self._buf += data
        while not self.done and (end := self._buf.find(b"\n")) >= 0:
            line = bytes(self._buf[:end])
            del self._buf[: end + 1]
            try:
                record = json.loads(line)
            except (ValueError, RecursionError):
                raise ProtocolError("a record is not JSON") from None
            if not isinstance(record, dict):
                raise ProtocolError("a record is not a JSON object")
            self._accept(record)
        if len(self._buf) > MAX_LINE:
            raise ProtocolError("a record is too long")

    def _accept(self, record: dict[str, Any]) -> None:
        kind = record.get("t")
        if kind == "test":
            index, status = record.get("i"), record.get("status")
            micros, data = record.get("us"), record.get("data")
            if index != len(self.records) or status not in STATUSES:
                raise ProtocolError(f"unexpected test record {index!r} {status!r}")
            if not isinstance(micros, int) or not isinstance(data, str):
                raise ProtocolError("malformed test record")
            if self.expected is not None and index >= self.expected:
                raise ProtocolError("more test records than tests")
            self.records.append(Record(index, status, micros, data))
        elif kind == "names" and self.names is None and not self.records:
            names = record.get("names")
            if not isinstance(names, str):
                raise ProtocolError("malformed names record")
            self.names = names.split("\n") if names else []
            self.expected = len(self.names)
        elif kind == "fatal" and self.fatal is None and isinstance(record.get("data"), str):
            self.fatal = Record(-1, "fatal", 0, record["data"]).info()
        elif kind == "done":
            if record.get("n") != len(self.records) or (
                self.fatal is None and self.expected not in (None, len(self.records))
            ):
                raise ProtocolError("completion record does not match the test records")
            self.done = True
        else:
            raise ProtocolError(f"unexpected record {str(kind)[:20]!r}")
