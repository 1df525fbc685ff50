"""`unit_tests`: run the candidate's Python on tests in the sandbox; score = share passed.

Three kinds of tests, exactly one per spec: ``cases`` call ``entry_point`` and compare its
return value with ``expected`` outside the sandbox (floats within a tolerance); ``io`` runs the
code as a program and compares its stdout; ``tests`` runs ``test_*`` functions in a process
apart from the candidate's, calling candidate functions with plain data. See
:mod:`bestofk.verifiers.sandbox` for what keeps hostile code in.
"""

from __future__ import annotations

import ast
import re
import textwrap
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from bestofk.verifiers.base import (
    Candidate,
    RequestContext,
    Verdict,
    VerifierCapacityError,
    VerifierResources,
    VerifierSpec,
)
from bestofk.verifiers.sandbox import (
    CallCase,
    IoCase,
    Job,
    RunResult,
    SandboxBusyError,
    SandboxUnavailableError,
    default_pool,
)

NAME = "unit_tests"
MAX_CODE_CHARS = 64_000
MAX_CASES = 200
MAX_STDIN_CHARS = 1_000_000
MAX_TIMEOUT_S = 30.0
MAX_DETAIL_CHARS = 1000

_FENCE = re.compile(r"^[ \t]*```[ \t]*([\w+.-]*)[^\n]*\n(.*?)^[ \t]*```", re.MULTILINE | re.DOTALL)
_OPEN_FENCE = re.compile(r"^[ \t]*```[ \t]*[\w+.-]*[^\n]*\n(.*)\Z", re.MULTILINE | re.DOTALL)
_PYTHON_TAGS = ("python", "py", "python3")


def extract_code(text: str) -> str:
    """The candidate's code: its first python fenced block (else the first untagged one, else
    the first one), an unclosed fence's rest (output cut off by max_tokens), or the whole text."""
    blocks = _FENCE.findall(text)
    if blocks:
        python = [code for tag, code in blocks if tag.lower() in _PYTHON_TAGS]
        untagged = [code for tag, code in blocks if not tag]
        return textwrap.dedent((python or untagged or [blocks[0][1]])[0])
    if match := _OPEN_FENCE.search(text):
        return textwrap.dedent(match.group(1))
    return text


class CallCaseSpec(BaseModel):
    """``entry_point(*args, **kwargs)`` must return ``expected``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    args: list[Any] = Field(default_factory=list)
    kwargs: dict[str, Any] = Field(default_factory=dict)
    expected: Any


class IoCaseSpec(BaseModel):
    """The program run with ``stdin`` must print ``stdout`` (trailing whitespace ignored)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    stdin: str = Field(default="", max_length=MAX_STDIN_CHARS)
    stdout: str


class UnitTestsSpec(VerifierSpec):
    """Exactly one of ``cases`` (with ``entry_point``), ``io`` or ``tests``; ``timeout_s`` is
    the wall limit of each test (the whole run is capped at 60 s)."""

    type: Literal["unit_tests"] = "unit_tests"
    entry_point: str | None = None
    cases: list[CallCaseSpec] | None = Field(default=None, min_length=1, max_length=MAX_CASES)
    io: list[IoCaseSpec] | None = Field(default=None, min_length=1, max_length=MAX_CASES)
    tests: str | None = Field(default=None, max_length=MAX_CODE_CHARS)
    timeout_s: float = Field(default=2.0, gt=0.0, le=MAX_TIMEOUT_S)

    @field_validator("entry_point")
    @classmethod
    def _identifier(cls, value: str | None) -> str | None:
        if value is not None and not value.isidentifier():
            raise ValueError(f"'entry_point' must be a Python identifier, got {value!r}")
        return value

    @field_validator("tests")
    @classmethod
    def _has_tests(cls, value: str | None) -> str | None:
        if value is None:
            return value
        try:
            tree = ast.parse(value)
        except SyntaxError as exc:
            raise ValueError(f"'tests' does not compile: {exc.msg} (line {exc.lineno})") from None
        except (RecursionError, MemoryError):
            # The parser's own guards against deep nesting ("-" * 10**5 + "1"): a bad request.
            raise ValueError("'tests' is nested too deeply to compile") from None
        names = [
            node.name
            for node in tree.body
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")
        ]
        if not names:
            raise ValueError("'tests' defines no test_* function")
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> UnitTestsSpec:
        given = [name for name in ("cases", "io", "tests") if getattr(self, name) is not None]
        if len(given) != 1:
            got = f" (got {' and '.join(given)})" if given else ""
            raise ValueError(f"give exactly one of 'cases', 'io' or 'tests'{got}")
        if self.cases is not None and self.entry_point is None:
            raise ValueError("'entry_point' is required with 'cases'")
        if self.cases is None and self.entry_point is not None:
            raise ValueError("'entry_point' is only used with 'cases'")
        return self


class UnitTestsVerifier:
    """Score = share of tests passed; passed = all passed; detail = the first failure and why."""

    Spec: ClassVar[type[VerifierSpec]] = UnitTestsSpec

    def __init__(self, spec: VerifierSpec, resources: VerifierResources) -> None:
        assert isinstance(spec, UnitTestsSpec)
        self.spec = spec
        self._pool = resources.sandbox
        self._calls = tuple(CallCase(c.args, c.kwargs, c.expected) for c in spec.cases or ())
        self._io = tuple(IoCase(c.stdin, c.stdout) for c in spec.io or ())

    async def verify(self, ctx: RequestContext, candidate: Candidate) -> Verdict:
        """Run the tests on the candidate's code.

        Every slot busy and the queue full is the request's failure, not the candidate's: a
        :class:`~bestofk.verifiers.base.VerifierCapacityError`, answered with 503 and Retry-After.
        """
        try:
            return await self._check(candidate.text)
        except SandboxBusyError as exc:
            raise VerifierCapacityError(str(exc), exc.retry_after_s) from None

    async def _check(self, text: str) -> Verdict:
        code = extract_code(text)
        if not code.strip():
            return Verdict(NAME, 0.0, False, "the candidate contains no code")
        if len(code) > MAX_CODE_CHARS:
            return Verdict(NAME, 0.0, False, f"the code is longer than {MAX_CODE_CHARS} chars")
        spec = self.spec
        job = Job(
            code, spec.timeout_s, spec.entry_point or "", self._calls, self._io, spec.tests or ""
        )
        pool = self._pool or default_pool()
        try:
            result = await pool.run(job)
        except SandboxUnavailableError as exc:
            return Verdict.failure(NAME, str(exc))
        return verdict_of(result)


def verdict_of(result: RunResult) -> Verdict:
    """The verdict for a sandbox run: an error verdict only when the sandbox itself failed."""
    if result.outcome == "error":
        return Verdict.failure(NAME, result.detail or "the sandbox failed")
    total = len(result.tests)
    if result.passed:
        detail = f"all {total} tests passed"
    elif not total:
        detail = result.detail or "no tests ran"
    else:
        detail = f"{result.passed_count}/{total} tests passed"
        first = next((test for test in result.tests if not test.passed), None)
        if first is not None:
            detail += f"; first failure: {first.name}: {first.reason}"
        elif result.detail:
            detail += f"; {result.detail}"
    if len(detail) > MAX_DETAIL_CHARS:
        detail = detail[: MAX_DETAIL_CHARS - 3] + "..."
    return Verdict(NAME, result.score, result.passed, detail)
