"""Hostile and benign candidates for the code sandbox, shared by its tests and the soak run.

The hostile ones try to escape: read the service's files and environment, reach the network,
kill the service, outlive their deadline. Each is ``(mode, code)``; ``hostile`` fills in the
paths, port and pid of one run.
"""

from __future__ import annotations

from typing import Any

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
