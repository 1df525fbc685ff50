"""The hostile candidates again, through ``POST /verify`` on the real server.

Each mode's hostile candidates go out as one request (K candidates, run in the server's own
sandbox pool); every one must fail, no secret of the server may appear in the response, the
host must be untouched, and benign candidates must verify afterwards.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from bestofk.tooling.procs import Server
from tests.test_sandbox import (
    BENIGN,
    HOSTILE,
    SECRET,
    SPECS,
    assert_host_untouched,
    host,  # noqa: F401  (a fixture, used by name)
    hostile,
)

SLOT_UID_RANGE = range(60000, 60000 + 2 * 64)


def _uid_and_parent(pid: str) -> tuple[int, str, str]:
    proc = Path("/proc") / pid
    ppid = (proc / "stat").read_text().rsplit(")", 1)[1].split()[1]
    return proc.stat().st_uid, ppid, (proc / "comm").read_text().strip()


def candidate_leftovers() -> list[str]:
    """Slot-uid processes a candidate started: children of a sandbox's driver.

    An idle warm sandbox is bwrap and its driver with no children; anything below a driver
    (inside the sandbox's PID namespace orphans re-parent to it) is left over from a run."""
    table = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                table[proc.name] = _uid_and_parent(proc.name)
            except (OSError, IndexError):
                continue  # it exited while we looked
    return [
        f"{pid} {comm}"
        for pid, (uid, ppid, comm) in table.items()
        if uid in SLOT_UID_RANGE
        and ppid in table
        and table[ppid][0] in SLOT_UID_RANGE
        and table[ppid][2] != "bwrap"
    ]


def verify(server: Server, mode: str, codes: list[str]) -> dict[str, Any]:
    spec = {"type": "unit_tests", **SPECS[mode]}
    body = {
        "prompt": "square x",
        "candidates": [f"```python\n{code}\n```" for code in codes],
        "verifiers": [spec],
        "timeout_s": 120,
    }
    reply = httpx.post(server.url + "/verify", json=body, timeout=180)
    assert reply.status_code == 200, reply.text
    assert SECRET not in reply.text
    data: dict[str, Any] = reply.json()
    return data


def test_server_holds_the_secret(server: Server) -> None:
    # The leak checks below mean something only if the server really has the secret.
    environ = Path(f"/proc/{server.process.pid}/environ").read_bytes()
    assert SECRET.encode() in environ


@pytest.mark.parametrize("mode", ["cases", "io", "tests"])
def test_hostile_candidates_through_verify(
    server: Server,
    host: dict[str, Any],  # noqa: F811  (the imported fixture, by name)
    mode: str,
) -> None:
    names = sorted(n for n, (m, _) in HOSTILE.items() if m == mode)
    data = verify(server, mode, [hostile(n, host)[1] for n in names])
    for name, candidate in zip(names, data["candidates"], strict=True):
        assert not candidate["passed"] and candidate["score"] < 1.0, (name, candidate)
    assert data["passed"] is False
    assert_host_untouched(host)
    benign = verify(server, mode, [BENIGN[mode]] * 2)
    assert all(c["passed"] for c in benign["candidates"]), benign
    assert candidate_leftovers() == []
