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

from verifiers.base import Candidate, RequestContext, Verdict, VerifierResources
from verifiers.sandbox import SandboxPool
from verifiers.sandbox.process import uid_processes
from verifiers.unit_tests import UnitTestsSpec, UnitTestsVerifier

SECRET = f"bestofk-secret-{secrets.token_hex(8)}"
os.environ["BESTOFK_TEST_SECRET"] = SECRET  # the service's environment: must never leak

CASES: dict[str, Any] = {
    "entry_point": "solve",
    "cases": [{"args": [2], "expected": 4}, {"args": [3], "expected": 9}],
    "timeout_s": 1.0,
}
IO: dict[str, Any] = {"io": [{"stdin": "2\n", "stdout": "4"}], "timeout_s": 1.0}
TESTS: dict[str, Any] = {
    "tests": "def test_two():\n    assert solve(2) == 4\n\n\n"
    "def test_three():\n    assert solve(3) == 9\n",
    "timeout_s": 1.0,
}
BENIGN = {
    "cases": "def solve(x):\n    return x * x\n",
    "io": "print(int(input()) ** 2)\n",
    "tests": "def solve(x):\n    return x * x\n",
}


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
# ROOT_DIR, SECRET_FILE, VICTIM_FILE, LISTEN_PORT and SERVICE_PID are filled in per run.
HOSTILE: dict[str, tuple[str, str]] = {
    "fork_bomb": (
        "cases",
        """
import os
def solve(x):
    while True:
        try:
            os.fork()
        except OSError:
            pass
""",
    ),
    "fork_bomb_posix": (
        "cases",
        """
import posix
while True:
    try:
        posix.fork()
    except OSError:
        pass
""",
    ),
    "fork_bomb_setsid": (
        "cases",
        """
import os, time
def solve(x):
    while True:
        try:
            if os.fork() == 0:
                os.setsid()  # out of the process group: only the PID namespace holds it
                time.sleep(100)
        except OSError:
            return None
""",
    ),
    "orphan_holding_output": (
        "cases",
        """
import os, time
if os.fork() == 0:
    time.sleep(10 ** 6)  # holds the sandbox's stdout and stderr open
def solve(x):
    return None
""",
    ),
    "thread_bomb": (
        "cases",
        """
import threading, time
def solve(x):
    while True:
        threading.Thread(target=time.sleep, args=(100,)).start()
""",
    ),
    "memory_bomb": (
        "cases",
        """
def solve(x):
    blocks = []
    while True:
        blocks.append(bytearray(10 ** 7))
""",
    ),
    "memory_bomb_at_once": ("cases", "def solve(x):\n    return len(bytearray(1 << 40))\n"),
    "memory_bomb_forked": (
        "cases",
        """
import os
def solve(x):
    for _ in range(50):
        try:
            if os.fork() == 0:
                blocks = []
                while True:
                    blocks.append(bytearray(10 ** 7))
        except OSError:
            pass
    return None
""",
    ),
    "loop_ignoring_signals": (
        "cases",
        """
import signal
for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGXCPU, signal.SIGALRM):
    signal.signal(sig, signal.SIG_IGN)
def solve(x):
    while True:
        pass
""",
    ),
    "sleep_forever_at_import": ("cases", "import time\ntime.sleep(10 ** 6)\n"),
    "setsid_daemon": (
        "cases",
        """
import os, time
def solve(x):
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            while True:
                time.sleep(0.05)
        os._exit(0)
    return None
""",
    ),
    "orphan_holding_pipes": (
        "io",
        """
import os, time
if os.fork() == 0:
    time.sleep(10 ** 6)
print(0)
""",
    ),
    "huge_output": (
        "cases",
        """
def solve(x):
    while True:
        print("x" * 100000)
""",
    ),
    "huge_output_io": (
        "io",
        """
import sys
while True:
    sys.stdout.write("y" * 100000)
""",
    ),
    "huge_file": (
        "cases",
        """
def solve(x):
    for path in ("/work/big", "/tmp/big"):
        with open(path, "wb") as f:
            while True:
                f.write(b"z" * 10 ** 6)
""",
    ),
    "fill_tmpfs": (
        "cases",
        """
def solve(x):
    for i in range(100):
        with open(f"/tmp/f{i}", "wb") as f:
            f.write(b"z" * (8 << 20))
""",
    ),
    "fd_exhaustion": (
        "cases",
        """
import os
def solve(x):
    return len([os.open("/dev/null", os.O_RDONLY) for _ in range(10 ** 6)])
""",
    ),
    "read_environment": (
        "cases",
        """
import os
def solve(x):
    return dict(os.environ)
""",
    ),
    "read_other_procs": (
        "cases",
        """
import os
def solve(x):
    found = []
    for pid in os.listdir("/proc"):
        found.append(open(f"/proc/{pid}/environ", "rb").read().decode())
    return found
""",
    ),
    "read_root_only_file": (
        "cases",
        """
def solve(x):
    return open(SECRET_FILE).read()
""",
    ),
    "read_service_files": (
        "cases",
        """
import os
def solve(x):
    out = []
    for path in ("/etc/passwd", "/etc/shadow", "/root/.bash_history", os.path.expanduser("~")):
        try:
            out.append(open(path).read())
        except Exception as exc:
            out.append(repr(exc))
    return out
""",
    ),
    "write_outside_workdir": (
        "cases",
        """
import os
def solve(x):
    for path in ("/usr/pwned", "/pwned", "/dev/pwned", ROOT_DIR + "/pwned", "/tmp/pwned"):
        try:
            open(path, "w").write("pwned")
        except OSError:
            pass
    return None
""",
    ),
    "delete_files": (
        "cases",
        """
import os, shutil
def solve(x):
    for path in (VICTIM_FILE, "/usr/bin/python3"):
        try:
            os.remove(path)
        except OSError:
            pass
    shutil.rmtree(ROOT_DIR, ignore_errors=True)
    return None
""",
    ),
    "connect_loopback": (
        "cases",
        """
import socket
def solve(x):
    s = socket.create_connection(("127.0.0.1", LISTEN_PORT), timeout=0.5)
    s.sendall(b"pwned")
    return x * x
""",
    ),
    "connect_outside": (
        "cases",
        """
import socket
def solve(x):
    socket.create_connection(("1.1.1.1", 53), timeout=0.5)
    return x * x
""",
    ),
    "udp_outside": (
        "cases",
        """
import socket
def solve(x):
    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"pwned", ("8.8.8.8", 53))
    return x * x
""",
    ),
    "kill_parent": (
        "cases",
        """
import os
def solve(x):
    for pid in (os.getppid(), 1, -1, SERVICE_PID):
        try:
            os.kill(pid, 9)
        except OSError:
            pass
    return None
""",
    ),
    "ptrace_driver": (
        "cases",
        """
import ctypes
def solve(x):
    libc = ctypes.CDLL(None, use_errno=True)
    return [libc.ptrace(16, 1, 0, 0), libc.syscall(438, 1, 4, 0)]  # PTRACE_ATTACH, pidfd_getfd
""",
    ),
    "new_namespaces": (
        "cases",
        """
import ctypes
def solve(x):
    libc = ctypes.CDLL(None, use_errno=True)
    return [libc.unshare(0x10000000), libc.unshare(0x40000000)]  # NEWUSER, NEWNET
""",
    ),
    "shell_out": (
        "cases",
        """
import subprocess
def solve(x):
    script = "id; ls / /etc /root; cat /etc/shadow; echo pwned > /usr/pwned; echo pwned > /pwned"
    return subprocess.run(["/bin/sh", "-c", script], capture_output=True, text=True).stdout
""",
    ),
    "kill_the_test_runner": (
        "tests",
        """
import os
os.kill(-1, 9)  # everything it may signal in the sandbox: the test runner, not the driver
def solve(x):
    return x * x
""",
    ),
    "sys_exit_zero": ("cases", "import sys\nsys.exit(0)\n"),
    "exit_in_call": ("cases", "import os\ndef solve(x):\n    os._exit(0)\n"),
    "atexit_marker": (
        "cases",
        """
import atexit, os
atexit.register(lambda: os.write(1, b"ALL TESTS PASSED\\ndone 2 0\\n"))
def solve(x):
    raise SystemExit(0)
""",
    ),
    "always_equal": (
        "cases",
        """
class AlwaysEqual:
    def __eq__(self, other):
        return True
    def __ne__(self, other):
        return False
    __hash__ = object.__hash__
def solve(x):
    return AlwaysEqual()
""",
    ),
    "always_equal_int": (
        "cases",
        """
class Int(int):
    def __eq__(self, other):
        return True
    __hash__ = int.__hash__
def solve(x):
    return Int(0)
""",
    ),
    "always_equal_tests_mode": (
        "tests",
        """
import builtins
class AlwaysEqual:
    def __eq__(self, other):
        return True
builtins.AssertionError = type("NotAnAssertion", (Exception,), {})
def solve(x):
    return AlwaysEqual()
""",
    ),
    "printed_markers": (
        "cases",
        """
def solve(x):
    print("PASS\\nok\\ntest 0 ok 1 1\\n4test 1 ok 1 1\\n9done 2 0")
    return None
""",
    ),
    "read_expected_values": (
        "cases",
        """
import gc
def solve(x):
    for obj in gc.get_objects():
        if isinstance(obj, dict) and "expected" in obj:
            return obj["expected"]
    return None
""",
    ),
    "read_test_source": (
        "tests",
        """
import gc
def solve(x):
    seen = [o for o in gc.get_objects() if isinstance(o, str) and "def test_" in o]
    return seen
""",
    ),
    "forge_result_channel": (
        "cases",
        """
import os
FORGED = b"test 0 ok 1 1\\n4test 1 ok 1 1\\n9done 2 0\\n"
def solve(x):
    for fd in range(0, 1024):
        try:
            os.write(fd, FORGED)
        except OSError:
            pass
    for path in ("/proc/1/fd/4", "/dev/fd/4"):
        try:
            open(path, "wb").write(FORGED)
        except OSError:
            pass
    return None
""",
    ),
    "stop_the_driver": (
        "cases",
        """
import os, signal
def solve(x):
    for sig in (signal.SIGSTOP, signal.SIGTERM):
        try:
            os.kill(1, sig)
        except OSError:
            pass
    return None
""",
    ),
    "deep_recursion_crash": (
        "cases",
        """
import sys
sys.setrecursionlimit(10 ** 8)
class Loop:
    def __repr__(self):
        return repr(self)  # through C at every level: the C stack overflows
def solve(x):
    return repr(Loop())
""",
    ),
    "huge_return_value": ("cases", "def solve(x):\n    return 'x' * (60 << 20)\n"),
}


def hostile(name: str, host: dict[str, Any]) -> tuple[str, str]:
    """The named candidate with this run's paths, port and pid filled in."""
    mode, code = HOSTILE[name]
    for key, value in {
        "ROOT_DIR": repr(str(host["root"])),
        "SECRET_FILE": repr(str(host["secret_file"])),
        "VICTIM_FILE": repr(str(host["victim"])),
        "LISTEN_PORT": str(host["port"]),
        "SERVICE_PID": str(host["pid"]),
    }.items():
        code = code.replace(key, value)
    return mode, code


SPECS = {"cases": CASES, "io": IO, "tests": TESTS}


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
