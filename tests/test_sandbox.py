"""Hostile candidates through the `unit_tests` verifier: each fails, and leaves nothing behind.

Every hostile candidate must end as a failed or error verdict, change nothing outside the
sandbox, leave no process running as a slot uid, put no secret of the service into a verdict,
and be followed by a benign candidate that verifies correctly. Without bwrap these tests fail
(never skip): install it with `apt-get install bubblewrap`.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bestofk.tooling.sandbox_corpus import BENIGN, HOSTILE, SPECS, hostile
from bestofk.verifiers.base import Candidate, RequestContext, Verdict, VerifierResources
from bestofk.verifiers.sandbox import SandboxPool
from bestofk.verifiers.sandbox.process import uid_processes
from bestofk.verifiers.unit_tests import UnitTestsSpec, UnitTestsVerifier

SECRET = f"bestofk-secret-{secrets.token_hex(8)}"
os.environ["BESTOFK_TEST_SECRET"] = SECRET  # the service's environment: must never leak


class Listener:
    """A loopback TCP port that records whether anything ever connected to it."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


@pytest.fixture(scope="module")
def pool() -> Iterator[SandboxPool]:
    if shutil.which("bwrap") is None:
        pytest.fail("bubblewrap (bwrap) is not installed: apt-get install bubblewrap")
    # warm=False: after every run no process at all may run as a slot uid, which makes
    # "nothing is left behind" exact. Warm pools are checked in test_warm_pool_cleans_up.
    sandbox_pool = SandboxPool(slots=2, warm=False, unsafe=False)
    assert sandbox_pool.available
    yield sandbox_pool
    sandbox_pool.close()


@pytest.fixture(scope="module")
def host() -> Iterator[dict[str, Any]]:
    """Things outside the sandbox that hostile code goes after."""
    root = Path(tempfile.mkdtemp(prefix="bestofk-host-"))
    root.chmod(0o755)
    secret_file = root / "root-only.txt"
    secret_file.write_text(SECRET)
    secret_file.chmod(0o600)
    victim = root / "victim.txt"
    victim.write_text("keep me")
    listener = Listener()
    yield {
        "root": root,
        "secret_file": secret_file,
        "victim": victim,
        "port": listener.port,
        "listener": listener,
        "pid": os.getpid(),
    }
    listener.close()
    shutil.rmtree(root)


# name -> (mode, code). None computes the right answer: each tries to escape, harm or cheat.


async def verify(pool: SandboxPool, mode: str, code: str) -> Verdict:
    spec = UnitTestsSpec.model_validate({"type": "unit_tests", **SPECS[mode]})
    verifier = UnitTestsVerifier(spec, VerifierResources(sandbox=pool))
    text = f"Here you go:\n```python\n{code}\n```\n"
    return await verifier.verify(RequestContext(prompt="square x"), Candidate(0, text))


def slot_processes(pool: SandboxPool) -> list[int]:
    return [pid for uid in pool.uids for pid in uid_processes(uid)]


def assert_host_untouched(host: dict[str, Any]) -> None:
    assert host["victim"].read_text() == "keep me"
    assert host["secret_file"].read_text() == SECRET
    assert not (host["root"] / "pwned").exists()
    assert not Path("/tmp/pwned").exists()
    assert not Path("/usr/pwned").exists()
    assert host["listener"].connections == 0


def test_at_least_thirty_hostile_candidates() -> None:
    assert len(HOSTILE) >= 30


@pytest.mark.parametrize("name", sorted(HOSTILE))
async def test_hostile_candidate_is_contained(
    pool: SandboxPool, host: dict[str, Any], name: str
) -> None:
    mode, code = hostile(name, host)
    verdict = await verify(pool, mode, code)
    assert not verdict.passed, verdict
    assert verdict.score < 1.0
    assert SECRET not in f"{verdict.detail} {verdict.error}"
    assert slot_processes(pool) == [], f"{name} left processes behind"
    assert_host_untouched(host)
    benign = await verify(pool, mode, BENIGN[mode])
    assert benign.passed and benign.score == 1.0, benign


async def test_hostile_details_say_why(pool: SandboxPool, host: dict[str, Any]) -> None:
    expectations = {
        "loop_ignoring_signals": "timed out after 1s",
        "memory_bomb_at_once": "memory limit exceeded (256 MiB)",
        "huge_output": "output",
        "fd_exhaustion": "Too many open files",
        "read_root_only_file": "FileNotFoundError",
        "connect_loopback": "PermissionError",
        "always_equal": "wrong answer: got <AlwaysEqual: ",
        "sys_exit_zero": "SystemExit",
        "exit_in_call": "crashed: exited with status 0",
        "deep_recursion_crash": "crashed: killed by SIGSEGV",
        "huge_return_value": "too long to return",
        "forge_result_channel": "crashed: sent a malformed reply",
    }
    for name, expected in expectations.items():
        verdict = await verify(pool, *hostile(name, host))
        assert expected in verdict.detail, (name, verdict.detail)


async def test_warm_pool_cleans_up(host: dict[str, Any]) -> None:
    warm_pool = SandboxPool(slots=1, warm=True, unsafe=False)
    try:
        for name in ("setsid_daemon", "fork_bomb", "orphan_holding_pipes"):
            assert not (await verify(warm_pool, *hostile(name, host))).passed
            assert (await verify(warm_pool, "cases", BENIGN["cases"])).passed
    finally:
        warm_pool.close()
    assert slot_processes(warm_pool) == []


def test_no_files_owned_by_slot_uids(pool: SandboxPool) -> None:
    tmp = Path(tempfile.gettempdir())
    owned = [p for p in tmp.iterdir() if p.lstat().st_uid in pool.uids]
    assert owned == []
