"""Turn the driver's records into pass/fail per test, comparing with expected values out here.

Return values arrive as JSON and are decoded into plain data (numbers, strings, lists, tuples,
dicts, sets, bytes; anything else is an :class:`~bestofk.verifiers.sandbox.protocol.Opaque` that
equals nothing), so no comparison here ever calls code the candidate wrote.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from bestofk.verifiers.sandbox.protocol import Job, Malformed, Record, RecordParser

REL_TOL = 1e-6
ABS_TOL = 1e-9
MAX_SET_MATCH = 1000
"""Sets of floats are matched pairwise (quadratic); larger ones must match exactly."""

Outcome = Literal["ok", "fail", "timeout", "memory", "killed", "error"]
RunEndKind = Literal["done", "timeout", "output", "cancelled", "exited", "protocol", "spawn"]


@dataclass(frozen=True, slots=True)
class RunEnd:
    """How a sandbox run ended, as the process runner saw it, with what the driver reported."""

    how: RunEndKind
    parser: RecordParser
    detail: str = ""
    elapsed_s: float = 0.0


@dataclass(frozen=True, slots=True)
class TestResult:
    """One test: its name, whether it passed, and why not."""

    name: str
    passed: bool
    status: str
    """``ok`` or ``wrong``, or the driver's status: exception, syntax, timeout, memory, …"""
    reason: str = ""


@dataclass(frozen=True, slots=True)
class RunResult:
    """Every test of one run, and the run's outcome for the ``sandbox_runs_total`` metric."""

    outcome: Outcome
    tests: tuple[TestResult, ...]
    detail: str = ""
    """What happened to the run as a whole (killed, timed out, could not start), if anything."""
    elapsed_ms: float = 0.0

    @property
    def passed_count(self) -> int:
        """How many tests passed."""
        return sum(test.passed for test in self.tests)

    @property
    def score(self) -> float:
        """Share of tests passed (0 when there are none)."""
        return self.passed_count / len(self.tests) if self.tests else 0.0

    @property
    def passed(self) -> bool:
        """All tests ran and passed."""
        return self.outcome == "ok"


def values_match(got: Any, expected: Any) -> bool:
    """Plain-data equality: floats within tolerance, tuples as lists, JSON-style dict keys."""
    try:
        return _match(got, expected)
    except (RecursionError, OverflowError):
        return False


def _match(got: Any, expected: Any) -> bool:
    if isinstance(expected, bool) or isinstance(got, bool):
        return type(got) is bool and type(expected) is bool and got == expected
    if isinstance(expected, int | float):
        if type(got) not in (int, float):
            return False
        if type(got) is int and type(expected) is int:
            return bool(got == expected)
        g, e = float(got), float(expected)
        if math.isnan(g) or math.isnan(e):
            return math.isnan(g) and math.isnan(e)
        return math.isclose(g, e, rel_tol=REL_TOL, abs_tol=ABS_TOL)
    if expected is None or isinstance(expected, str | bytes):
        return type(got) is type(expected) and bool(got == expected)
    if isinstance(expected, dict):
        if type(got) is not dict or len(got) != len(expected):
            return False
        keyed = {_key(k): v for k, v in got.items()}
        wanted = {_key(k): v for k, v in expected.items()}
        return keyed.keys() == wanted.keys() and all(_match(keyed[k], wanted[k]) for k in wanted)
    if isinstance(expected, list | tuple | set | frozenset):
        if type(got) in (list, tuple) and not isinstance(expected, set | frozenset):
            return len(got) == len(expected) and all(map(_match, got, expected))
        if type(got) is set:
            return _match_unordered(list(got), list(expected))
    return False


def _key(key: Any) -> Any:
    """A dict key as JSON would spell it, so {1: "a"} matches the JSON object {"1": "a"}."""
    if key is None or isinstance(key, bool):
        return {None: "null", True: "true", False: "false"}[key]
    if type(key) is int:
        return str(key)
    if type(key) is float:
        return float.__repr__(key)
    return key if type(key) is str else ("not a JSON key", repr(key))


def _match_unordered(got: list[Any], expected: list[Any]) -> bool:
    if len(got) != len(expected):
        return False
    if len(got) > MAX_SET_MATCH:
        return False
    remaining = list(got)
    for item in expected:
        for i, candidate in enumerate(remaining):
            if _match(candidate, item):
                del remaining[i]
                break
        else:
            return False
    return True


def _short(value: Any, limit: int = 100) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _normalise_output(text: str) -> list[str]:
    return [line.rstrip() for line in text.replace("\r\n", "\n").rstrip().split("\n")]


def _where(info: dict[str, Any]) -> str:
    line = info.get("line")
    return f" (line {line})" if isinstance(line, int) else ""


def _failure(record: Record, job: Job, memory_mib: int) -> str:
    info = record.info()
    msg = str(info.get("msg", ""))
    kind = str(info.get("type", ""))
    if record.status == "exception":
        return f"{kind}: {msg}{_where(info)}" if msg else f"{kind}{_where(info)}"
    if record.status == "fail":
        return f"{'assertion failed' if kind == 'AssertionError' else kind}: {msg}{_where(info)}"
    if record.status == "syntax":
        return f"syntax error: {msg}{_where(info)}"
    if record.status == "noentry":
        return f"the code defines no function {job.entry_point!r}"
    if record.status == "timeout":
        return msg if msg.startswith("timed out while") else f"timed out after {job.timeout_s:g}s"
    if record.status == "memory":
        return f"memory limit exceeded ({memory_mib} MiB)"
    if record.status == "crash":
        return f"crashed: {msg}" if msg else "crashed"
    if record.status == "output":
        return f"output limit exceeded: {msg}"
    return msg or record.status


def _judge_record(job: Job, record: Record, name: str, memory_mib: int) -> TestResult:
    if record.status != "ok":
        return TestResult(name, False, record.status, _failure(record, job, memory_mib))
    if job.mode == "tests":
        return TestResult(name, True, "ok")
    if job.mode == "io":
        got = record.data
        want = job.io[record.index].stdout
        got_lines, want_lines = _normalise_output(got), _normalise_output(want)
        if got_lines == want_lines:
            return TestResult(name, True, "ok")
        for line, (g, w) in enumerate(zip([*got_lines, ""], [*want_lines, ""], strict=False), 1):
            if g != w:
                why = f"wrong output at line {line}: got {_short(g)}, expected {_short(w)}"
                return TestResult(name, False, "wrong", why)
        why = f"wrong output: got {len(got_lines)} lines, expected {len(want_lines)}"
        return TestResult(name, False, "wrong", why)
    expected = job.calls[record.index].expected
    try:
        got = record.value()
    except Malformed:
        return TestResult(name, False, "crash", "crashed: returned a malformed result")
    if values_match(got, expected):
        return TestResult(name, True, "ok")
    why = f"wrong answer: got {_short(got)}, expected {_short(expected)}"
    return TestResult(name, False, "wrong", why)


def _call_name(job: Job, index: int) -> str:
    case = job.calls[index]
    args = [_short(a, 40) for a in case.args]
    args += [f"{k}={_short(v, 40)}" for k, v in case.kwargs.items()]
    return f"case {index + 1} {job.entry_point}({', '.join(args)})"


def names_of(job: Job, parser: RecordParser) -> list[str]:
    """How tests are named in details: the call, the io case number, or the test function."""
    if job.mode == "call":
        return [_call_name(job, i) for i in range(len(job.calls))]
    if job.mode == "io":
        return [f"io case {i + 1}" for i in range(len(job.io))]
    return list(parser.names or [])


_RUN_PROBLEMS: dict[RunEndKind, tuple[str, str]] = {
    "timeout": ("timeout", "timed out: the run exceeded its time budget"),
    "output": ("killed", "killed: the code wrote more output than the sandbox allows"),
    "cancelled": ("killed", "killed: the request was cancelled"),
    "exited": ("error", "the sandbox exited without a completion record"),
    "protocol": ("error", "the sandbox driver sent malformed records"),
    "spawn": ("error", "could not start the sandbox"),
}


def judge(job: Job, end: RunEnd, memory_mib: int) -> RunResult:
    """Every test's result and the run's outcome."""
    parser = end.parser
    names = names_of(job, parser)
    results = [
        _judge_record(job, record, names[record.index], memory_mib) for record in parser.records
    ]
    detail = ""
    if end.how != "done":
        status, detail = _RUN_PROBLEMS[end.how]
        detail = f"{detail}: {end.detail}" if end.detail else detail
        results += [TestResult(name, False, status, detail) for name in names[len(results) :]]
    elif parser.fatal is not None:
        info = parser.fatal
        kind, msg = info.get("type"), info.get("msg", "")
        detail = f"the tests could not run: {f'{kind}: ' if kind else ''}{msg}{_where(info)}"
    elapsed_ms = end.elapsed_s * 1000
    return RunResult(_outcome(end, results), tuple(results), detail, elapsed_ms)


def _outcome(end: RunEnd, results: list[TestResult]) -> Outcome:
    if end.how in ("exited", "protocol", "spawn"):
        return "error"
    failed = {test.status for test in results if not test.passed}
    if end.how in ("output", "cancelled") or failed & {"crash", "output", "killed"}:
        return "killed"
    if end.how == "timeout" or "timeout" in failed:
        return "timeout"
    if "memory" in failed:
        return "memory"
    if failed or not results or end.parser.fatal is not None:
        return "fail"
    return "ok"
