"""Property-based fuzzing of every operation in the service's own OpenAPI schema: no 5xx.

schemathesis generates requests from ``/openapi.json``, both ones that fit the schema
(positive) and ones that break it (negative), and sends them to a real bestofk over a real
vLLM backend with small limits, so accepted requests stay cheap. Every answer must be below
500: a bad request is the client's fault and must say so with a 4xx.

``BESTOFK_SCHEMATHESIS_EXAMPLES`` sets how many requests at least (default 1000).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.core.result import Ok
from schemathesis.core.transport import Response
from schemathesis.generation.case import Case

from bestofk.tooling.procs import Server, engine_env, start_bestofk
from tests.conftest import CONFIG

EXAMPLES = int(os.environ.get("BESTOFK_SCHEMATHESIS_EXAMPLES", "1000"))
SMALL_LIMITS = {
    "BESTOFK_LIMITS__MAX_K": "4",
    "BESTOFK_LIMITS__MAX_TOKENS": "16",
    "BESTOFK_DEFAULT_MAX_TOKENS": "8",
    "BESTOFK_DEFAULT_K": "2",
    "BESTOFK_LIMITS__REQUEST_TIMEOUT_S": "10",
    "BESTOFK_LIMITS__MAX_CANDIDATES": "8",
}


@pytest.fixture(scope="module")
def fuzz_server(vllm_backend: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """bestofk over the real vLLM backend, with limits that keep accepted requests fast."""
    log = tmp_path_factory.mktemp("logs") / "bestofk-fuzz.log"
    env = engine_env(BESTOFK_CONFIG=str(CONFIG), **SMALL_LIMITS)
    server = start_bestofk(log, "--backend", vllm_backend.url, env=env)
    try:
        server.wait_ready(60)
        yield server
    finally:
        server.stop()


@dataclass
class Tally:
    """Requests sent per operation and status, and every 5xx with what provoked it."""

    sent: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    server_errors: list[str] = field(default_factory=list)
    own_deadline: int = 0
    """504s for requests whose own ``timeout_s`` (under a second) ran out: the documented
    answer to a deadline the client chose, not a fault of the server."""

    @property
    def total(self) -> int:
        """Requests sent in all."""
        return sum(self.sent.values())


def _own_deadline(case: Case[Any], response: Response) -> bool:
    body = case.body if isinstance(case.body, dict) else {}
    timeout = body.get("timeout_s")
    if response.status_code != 504 or not isinstance(timeout, int | float) or timeout >= 1.0:
        return False
    error: object = response.json().get("error", {})
    return isinstance(error, dict) and error.get("type") == "timeout_error"


def fuzz(base_url: str, quota: int) -> Tally:
    """Send at least ``quota`` generated requests to the server at ``base_url``.

    Shrinking is off: a 5xx is recorded with its request and the run goes on, so one run
    reports every failure rather than the first. The operations without a body (``/health``,
    ``/metrics``, ``/v1/models``) have almost nothing to vary, so the quota goes to the ones
    with a body, half positive and half negative.
    """
    schema = schemathesis.openapi.from_url(base_url + "/openapi.json")
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), f"the service's own schema is invalid: {result.err()}"
        operations.append(result.ok())
    with_body = [op for op in operations if op.body]
    per_run = -(-quota // (2 * len(with_body))) + 5  # ceiling, plus room for duplicates
    tally = Tally()
    session = requests.Session()

    def send(case: Case[Any]) -> None:
        response = case.call(base_url=base_url, session=session, timeout=60)
        label = f"{case.operation.method.upper()} {case.operation.path}"
        tally.sent[label] += 1
        tally.statuses[response.status_code] += 1
        if _own_deadline(case, response):
            tally.own_deadline += 1
        elif response.status_code >= 500:
            tally.server_errors.append(
                f"{label} -> {response.status_code} {response.text[:300]}\n"
                f"  body: {str(case.body)[:500]}"
            )

    for op in operations:
        modes = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE] if op.body else [None]
        for mode in modes:
            strategy = op.as_strategy(generation_mode=mode or GenerationMode.POSITIVE)

            @settings(
                max_examples=per_run if mode else 5,
                deadline=None,
                database=None,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            @given(case=strategy)
            def run(case: Case[Any]) -> None:
                send(case)

            run()
    session.close()
    return tally


def test_generated_requests_never_get_a_server_error(fuzz_server: Server) -> None:
    tally = fuzz(fuzz_server.url, EXAMPLES)
    statuses = dict(sorted(tally.statuses.items()))
    print(f"\nschemathesis: {tally.total} requests; by status {statuses}")
    print(f"by operation {dict(tally.sent)}; 504 past the client's deadline: {tally.own_deadline}")
    assert tally.total >= EXAMPLES, tally.sent
    assert not tally.server_errors, "\n".join(tally.server_errors[:20])
    assert sum(n for code, n in tally.statuses.items() if code == 200) > 0, tally.statuses
