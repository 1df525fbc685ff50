"""The `unit_tests` verifier on honest candidates: the three modes, scores, details, specs,
the pool's queue and outcome hook, and what happens without bwrap."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from bestofk.service.job_run import timed
from bestofk.verifiers import registry
from bestofk.verifiers.base import (
    Candidate,
    RequestContext,
    Verdict,
    VerifierCapacityError,
    VerifierResources,
)
from bestofk.verifiers.sandbox import SandboxPool, bwrap
from bestofk.verifiers.sandbox.process import uid_processes
from bestofk.verifiers.unit_tests import NAME, UnitTestsVerifier, extract_code

ADD: dict[str, Any] = {
    "entry_point": "add",
    "cases": [
        {"args": [1, 2], "expected": 3},
        {"args": [0.1, 0.2], "expected": 0.3},
        {"args": [[1], [2]], "expected": [1, 2]},
        {"kwargs": {"a": 2, "b": 2}, "expected": 4},
    ],
}
SUM_IO: dict[str, Any] = {
    "io": [
        {"stdin": "1 2\n", "stdout": "3\n"},
        {"stdin": "10 -4", "stdout": "6"},
        {"stdin": "5 5\n", "stdout": "10   \n\n"},
    ]
}
ADD_TESTS = """
def test_small():
    assert add(1, 2) == 3


def test_floats():
    assert abs(add(0.1, 0.2) - 0.3) < 1e-9


def test_type_error():
    try:
        add(None, 1)
    except TypeError:
        return
    raise AssertionError("no TypeError")
"""


@pytest.fixture(scope="module")
def pool() -> Iterator[SandboxPool]:
    if shutil.which("bwrap") is None:
        pytest.fail("bubblewrap (bwrap) is not installed: apt-get install bubblewrap")
    sandbox_pool = SandboxPool(slots=2, unsafe=False)
    yield sandbox_pool
    sandbox_pool.close()


async def check(pool: SandboxPool | None, fields: dict[str, Any], text: str) -> Verdict:
    spec = registry.parse_spec({"type": "unit_tests", **fields})
    verifier = registry.build([spec], VerifierResources(sandbox=pool))[0]
    assert isinstance(verifier, UnitTestsVerifier)
    # As the pipeline calls it: timed, so the verdict carries its latency.
    return await timed(
        NAME, lambda: verifier.verify(RequestContext(prompt="add"), Candidate(0, text))
    )


async def test_cases_all_pass(pool: SandboxPool) -> None:
    verdict = await check(pool, ADD, "```python\ndef add(a, b):\n    return a + b\n```")
    assert verdict.passed and verdict.score == 1.0
    assert verdict.detail == "all 4 tests passed"
    assert verdict.error is None and verdict.latency_ms > 0


async def test_cases_partial_score_and_first_failure(pool: SandboxPool) -> None:
    code = "def add(a, b):\n    return 0 if a == 0.1 else a + b\n"
    verdict = await check(pool, ADD, code)
    assert not verdict.passed and verdict.score == 0.75
    assert verdict.detail == (
        "3/4 tests passed; first failure: case 2 add(0.1, 0.2): wrong answer: got 0, expected 0.3"
    )


async def test_return_values_compare_as_plain_data(pool: SandboxPool) -> None:
    code = """
VALUES = {
    "tuple": (1, 2), "float": [0.1 + 0.2], "int_keys": {1: "a"}, "set": {3, 1, 2},
    "true": True, "nan": float("nan"), "nested": {"a": [(1.0000000001, "x")]},
}
def get(key):
    return VALUES[key]
"""
    cases = [
        {"args": ["tuple"], "expected": [1, 2]},
        {"args": ["float"], "expected": [0.3]},
        {"args": ["int_keys"], "expected": {"1": "a"}},
        {"args": ["set"], "expected": [1, 2, 3]},
        {"args": ["true"], "expected": True},
        {"args": ["nested"], "expected": {"a": [[1, "x"]]}},
        {"args": ["true"], "expected": 1},  # a bool is not the number 1
        {"args": ["tuple"], "expected": [2, 1]},
    ]
    verdict = await check(pool, {"entry_point": "get", "cases": cases}, code)
    assert verdict.score == 6 / 8, verdict.detail
    assert "case 7 get('true'): wrong answer: got True, expected 1" in verdict.detail


async def test_io_mode(pool: SandboxPool) -> None:
    code = "a, b = map(int, input().split())\nprint(a + b)\n"
    verdict = await check(pool, SUM_IO, code)
    assert verdict.passed and verdict.detail == "all 3 tests passed"
    wrong = "import sys\na, b = map(int, sys.stdin.read().split())\nprint(a + b if a < 10 else 0)"
    verdict = await check(pool, SUM_IO, wrong)
    assert verdict.score == 2 / 3
    assert "io case 2: wrong output at line 1: got '0', expected '6'" in verdict.detail


async def test_tests_mode(pool: SandboxPool) -> None:
    verdict = await check(pool, {"tests": ADD_TESTS}, "def add(a, b):\n    return a + b\n")
    assert verdict.passed and verdict.detail == "all 3 tests passed"
    verdict = await check(pool, {"tests": ADD_TESTS}, "def add(a, b):\n    return 3\n")
    assert verdict.score == 1 / 3
    assert "first failure: test_floats: assertion failed: assert abs(add(0.1, 0.2)" in (
        verdict.detail
    )
    assert "(line 7)" in verdict.detail


async def test_syntax_error_detail(pool: SandboxPool) -> None:
    for fields in (ADD, SUM_IO, {"tests": ADD_TESTS}):
        verdict = await check(pool, fields, "def add(a, b)\n    return a + b\n")
        assert verdict.score == 0.0 and verdict.error is None
        assert "syntax error: expected ':' (line 1)" in verdict.detail, verdict.detail


async def test_exception_detail(pool: SandboxPool) -> None:
    verdict = await check(pool, ADD, "def add(a, b):\n    x = 1\n    return a / 0\n")
    assert "case 1 add(1, 2): ZeroDivisionError: division by zero (line 3)" in verdict.detail
    verdict = await check(pool, SUM_IO, "raise ValueError('bad input')")
    assert "io case 1: ValueError: bad input (line 1)" in verdict.detail


async def test_timeout_and_memory_details(pool: SandboxPool) -> None:
    fields = {**ADD, "timeout_s": 0.3}
    verdict = await check(pool, fields, "def add(a, b):\n    while True:\n        pass\n")
    assert "case 1 add(1, 2): timed out after 0.3s" in verdict.detail
    verdict = await check(pool, ADD, "def add(a, b):\n    return bytes(1 << 40)\n")
    assert "memory limit exceeded (256 MiB)" in verdict.detail


async def test_missing_entry_point_and_no_code(pool: SandboxPool) -> None:
    verdict = await check(pool, ADD, "def plus(a, b):\n    return a + b\n")
    assert "the code defines no function 'add'" in verdict.detail
    verdict = await check(pool, ADD, "   ")
    assert verdict.detail == "the candidate contains no code"


def test_extract_code() -> None:
    assert extract_code("x = 1") == "x = 1"
    fenced = "Sure:\n```\nuntagged = 1\n```\nand\n```python\nwanted = 2\n```\n"
    assert extract_code(fenced) == "wanted = 2\n"
    assert extract_code("```py\n  a = 1\n  b = 2\n```") == "a = 1\nb = 2\n"
    assert extract_code("Cut off:\n```python\ndef f():\n    return 1") == "def f():\n    return 1"
    assert extract_code("```bash\nls\n```") == "ls\n"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({}, "give exactly one of 'cases', 'io' or 'tests'"),
        ({**ADD, **SUM_IO}, "give exactly one of 'cases', 'io' or 'tests' (got cases and io)"),
        ({"cases": ADD["cases"]}, "'entry_point' is required with 'cases'"),
        ({**SUM_IO, "entry_point": "f"}, "'entry_point' is only used with 'cases'"),
        ({**ADD, "entry_point": "not valid"}, "entry_point: Value error, 'entry_point' must be"),
        ({"tests": "def test_x(:\n"}, "tests: Value error, 'tests' does not compile"),
        ({"tests": "def check():\n    pass\n"}, "'tests' defines no test_* function"),
        ({**ADD, "timeout_s": 100}, "timeout_s: Input should be less than or equal to 30"),
        ({**ADD, "cases": []}, "cases: List should have at least 1 item"),
        ({**ADD, "cases": [{"args": [1]}]}, "cases.0.expected: Field required"),
        ({**ADD, "bogus": 1}, "bogus: Extra inputs are not permitted"),
    ],
)
def test_spec_validation(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(registry.InvalidVerifierSpecError) as info:
        registry.parse_spec({"type": "unit_tests", **fields})
    assert message in str(info.value)


async def test_without_bwrap_the_verdict_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(bwrap, "find_bwrap", lambda: None)
    monkeypatch.delenv("BESTOFK_UNSAFE_NO_SANDBOX", raising=False)
    outcomes: list[str] = []
    no_bwrap = SandboxPool(slots=1, on_outcome=outcomes.append)
    verdict = await check(no_bwrap, ADD, "def add(a, b):\n    return a + b\n")
    assert not verdict.passed and verdict.error is not None
    assert "apt-get install bubblewrap" in verdict.error
    assert "BESTOFK_UNSAFE_NO_SANDBOX=1" in verdict.error
    assert outcomes == ["error"]


async def test_unsafe_flag_runs_without_bwrap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bwrap, "find_bwrap", lambda: None)
    monkeypatch.setenv("BESTOFK_UNSAFE_NO_SANDBOX", "1")
    unsafe = SandboxPool(slots=1)
    try:
        verdict = await check(unsafe, ADD, "def add(a, b):\n    return a + b\n")
        assert verdict.passed, verdict.detail
        verdict = await check(
            unsafe, {**ADD, "timeout_s": 0.3}, "def add(a, b):\n    while 1: pass"
        )
        assert "timed out after 0.3s" in verdict.detail
    finally:
        unsafe.close()


async def test_busy_pool_raises_with_retry_after() -> None:
    busy = SandboxPool(slots=1, max_queue=1, queue_timeout_s=0.2)
    slow = "import time\ndef add(a, b):\n    time.sleep(0.8)\n    return a + b\n"
    try:
        running = asyncio.create_task(check(busy, {**ADD, "cases": ADD["cases"][:1]}, slow))
        await asyncio.sleep(0.1)
        with pytest.raises(VerifierCapacityError) as timed_out:  # queued, no slot within 0.2 s
            await check(busy, ADD, "def add(a, b):\n    return a + b\n")
        assert timed_out.value.retry_after_s >= 1
        queued = asyncio.create_task(check(busy, ADD, "def add(a, b):\n    return a + b\n"))
        await asyncio.sleep(0.05)
        with pytest.raises(VerifierCapacityError, match="1 runs are already queued"):
            await check(busy, ADD, "def add(a, b):\n    return a + b\n")
        assert (await running).passed
        with pytest.raises(VerifierCapacityError):
            await queued  # it waited 0.2 s while the slow run held the only slot
        assert (await check(busy, ADD, "def add(a, b):\n    return a + b\n")).passed
    finally:
        busy.close()


async def test_queued_runs_get_slots_in_turn() -> None:
    queue = SandboxPool(slots=1, max_queue=8, queue_timeout_s=30)
    try:
        code = "def add(a, b):\n    return a + b\n"
        verdicts = await asyncio.gather(*(check(queue, ADD, code) for _ in range(6)))
        assert all(verdict.passed for verdict in verdicts)
    finally:
        queue.close()


async def test_outcomes_are_reported() -> None:
    outcomes: list[str] = []
    counted = SandboxPool(slots=1, on_outcome=outcomes.append)
    fields = {**ADD, "cases": ADD["cases"][:1], "timeout_s": 0.3}
    try:
        for body in (
            "return a + b",
            "return 0",
            "while True: pass",
            "return bytes(1 << 40)",
            "print('x' * (2 << 20))",
        ):
            await check(counted, fields, f"def add(a, b):\n    {body}\n")
    finally:
        counted.close()
    assert outcomes == ["ok", "fail", "timeout", "memory", "killed"]


async def test_default_pool_when_the_app_gives_none() -> None:
    verdict = await check(None, ADD, "def add(a, b):\n    return a + b\n")
    assert verdict.passed


async def test_tests_that_cannot_run(pool: SandboxPool) -> None:
    tests = "def test_a():\n    assert True\n\nraise KeyError('setup failed')\n"
    verdict = await check(pool, {"tests": tests}, "def add(a, b):\n    return a + b\n")
    assert not verdict.passed and verdict.score == 0.0
    assert verdict.detail == "the tests could not run: KeyError: 'setup failed' (line 4)"


async def test_cancelling_a_run_kills_it_and_frees_the_slot() -> None:
    outcomes: list[str] = []
    single = SandboxPool(slots=1, on_outcome=outcomes.append)
    slow = "import time\ndef add(a, b):\n    time.sleep(20)\n"
    try:
        started = asyncio.get_running_loop().time()
        run = asyncio.create_task(check(single, {**ADD, "timeout_s": 30}, slow))
        await asyncio.sleep(0.3)
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
        verdict = await check(single, ADD, "def add(a, b):\n    return a + b\n")
        assert verdict.passed
        assert asyncio.get_running_loop().time() - started < 5
        assert outcomes == ["killed", "ok"]
    finally:
        single.close()
    assert [pid for uid in single.uids for pid in uid_processes(uid)] == []
