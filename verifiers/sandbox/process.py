"""One single-use sandbox: spawned before its job arrives, fed the job, read, killed, swept.

A sandbox serves exactly one run, so a warm one (spawned while the previous run's verdict was
being written) keeps every guarantee of a cold one: it has only waited, blocked on its job pipe.
The service enforces the wall deadline and the output cap here, never trusting the sandbox to
stop itself, and cleans up in an order that leaves nothing behind: kill the driver (PID 1 of the
sandbox's PID namespace, so the kernel kills every process inside), let bwrap (our child) reap
it and exit, reap bwrap, then SIGKILL anything still running as the slot's uid.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pwd
import select
import signal
import subprocess
import tempfile
import time
from concurrent.futures import Future
from pathlib import Path

from bestofk.verifiers.sandbox.bwrap import Launcher
from bestofk.verifiers.sandbox.grading import RunEnd, RunEndKind
from bestofk.verifiers.sandbox.protocol import Job, ProtocolError, RecordParser, driver_payload
from bestofk.verifiers.sandbox.spawner import on_spawner_thread

GRACE_S = 1.0
"""Time past the job's budget before the service kills a driver that has not finished."""


def spawn(launcher: Launcher, uid: int | None) -> Future[SandboxProcess]:
    """Start a sandbox on the spawner thread (see :mod:`~bestofk.verifiers.sandbox.spawner` for
    why); it waits for its job once started."""
    return on_spawner_thread(lambda: SandboxProcess(launcher, uid))


class SandboxProcess:
    """A sandbox waiting for (or running) its one job. Created by :func:`spawn` only."""

    def __init__(self, launcher: Launcher, uid: int | None) -> None:
        self.uid = uid
        self._sandboxed = launcher.sandboxed
        self._output_cap = launcher.limits.output_bytes
        job_r, self._job_w = os.pipe()
        self._result_r, result_w = os.pipe()
        tests_r, self._tests_w = os.pipe()
        self._out_r, out_w = os.pipe()
        given = [job_r, result_w, tests_r, launcher.driver[0]]
        seccomp_fd = None
        if launcher.seccomp:
            seccomp_fd, seccomp_w = os.pipe()
            os.write(seccomp_w, launcher.seccomp)  # a few hundred bytes: fits the pipe buffer
            os.close(seccomp_w)
            given.append(seccomp_fd)
        argv = launcher.argv((job_r, result_w, tests_r), seccomp_fd, uid)
        try:
            self._popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out_w,
                stderr=out_w,
                pass_fds=given,
                env={},  # the sandbox starts from nothing: no service secrets, even outside
                cwd="/",
                start_new_session=True,
            )
        except BaseException:
            for fd in (self._job_w, self._result_r, self._tests_w, self._out_r):
                os.close(fd)
            raise
        finally:
            for fd in (*given, out_w):
                if fd != launcher.driver[0]:  # shared by every spawn of the pool
                    os.close(fd)
        self._open = {self._job_w, self._result_r, self._tests_w, self._out_r}

    def alive(self) -> bool:
        """Still waiting for its job (a warm sandbox can die, e.g. if killed by an operator)."""
        return self._popen.poll() is None

    def execute(self, job: Job, abort_fd: int | None = None) -> RunEnd:
        """Hand over the job and read records until completion, deadline or output cap, or
        until ``abort_fd`` becomes readable (the request that wanted the run went away)."""
        start = time.monotonic()
        deadline = start + job.budget_s + GRACE_S
        parser = RecordParser(expected=None if job.mode == "tests" else len(job.calls or job.io))
        pending = {
            self._job_w: driver_payload(job),
            self._tests_w: job.tests.encode("utf-8", "surrogatepass"),
        }
        poller = select.poll()
        for fd, data in list(pending.items()):
            os.set_blocking(fd, False)
            if data:
                poller.register(fd, select.POLLOUT)
            else:
                del pending[fd]
                self._close(fd)
        poller.register(self._result_r, select.POLLIN)
        poller.register(self._out_r, select.POLLIN)
        if abort_fd is not None:
            poller.register(abort_fd, select.POLLIN)
        output = bytearray()
        how: RunEndKind | None = None
        detail = ""
        while how is None:
            wait = deadline - time.monotonic()
            if parser.done:
                how = "done"
            elif wait <= 0:
                how = "timeout"
            for fd, _ in poller.poll(wait * 1000) if how is None else ():
                if fd == abort_fd:
                    how = "cancelled"
                    break
                if fd in pending:
                    try:
                        pending[fd] = pending[fd][os.write(fd, pending[fd]) :]
                    except BlockingIOError:
                        continue
                    except BrokenPipeError:  # the driver died before reading it all
                        pending[fd] = b""
                    if not pending[fd]:
                        poller.unregister(fd)
                        del pending[fd]
                        self._close(fd)
                elif fd == self._result_r:
                    data = os.read(fd, 1 << 20)
                    if not data:
                        how = "done" if parser.done else "exited"
                        detail = "" if parser.done else self._last_words(output)
                        break
                    try:
                        parser.feed(data)
                    except ProtocolError as exc:
                        how, detail = "protocol", str(exc)
                        break
                else:
                    data = os.read(fd, 65536)
                    if not data:
                        poller.unregister(fd)
                    output += data
                    if len(output) > self._output_cap:
                        how = "output"
                        detail = f"more than {self._output_cap >> 10} KiB of stdout and stderr"
                        break
        return RunEnd(how, parser, detail, time.monotonic() - start)

    def _last_words(self, output: bytearray) -> str:
        """Why a sandbox ended without its completion record: exit status and first output
        (bwrap's own error messages end up there)."""
        status = self._exit_status(0.5)
        with contextlib.suppress(OSError):
            while len(output) < 4096 and (data := os.read(self._out_r, 4096)):
                output += data
        said = output[:300].decode("utf-8", "replace").strip()
        return f"exit status {status}" + (f": {said}" if said else "")

    def _exit_status(self, wait_s: float) -> int | None:
        """The exit status once exited (waiting up to ``wait_s``), without reaping: an
        unreaped process keeps its pid and group id, so a later kill cannot hit a stranger."""
        give_up = time.monotonic() + wait_s
        while True:
            try:
                info = os.waitid(os.P_PID, self._popen.pid, os.WEXITED | os.WNOWAIT | os.WNOHANG)
            except ChildProcessError:  # already reaped
                return self._popen.returncode
            if info is not None:
                return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status
            if time.monotonic() > give_up:
                return None
            time.sleep(0.005)

    def kill(self) -> None:
        """Kill and reap everything this sandbox started. Idempotent."""
        for fd in (self._job_w, self._tests_w):
            self._close(fd)  # a driver still waiting for its job reads EOF and exits
        pid = self._popen.pid
        if self._popen.returncode is None:
            if self._sandboxed:
                self._kill_sandbox(pid)
            else:
                with contextlib.suppress(OSError):
                    os.killpg(pid, signal.SIGKILL)  # not yet reaped: the group id is still ours
                self._popen.wait()
        if self.uid is not None:
            sweep_uid(self.uid)
        for fd in (self._result_r, self._out_r):
            self._close(fd)

    def _kill_sandbox(self, pid: int) -> None:
        # Kill the driver, not bwrap: bwrap then reaps it and exits by itself. Killing bwrap
        # first would orphan the driver's corpse to the host's init, which reaps it late.
        give_up = time.monotonic() + 1.0
        while True:
            for child in _children(pid, self.uid):
                with contextlib.suppress(OSError):
                    os.kill(child, signal.SIGKILL)
            try:
                self._popen.wait(timeout=0.01)
                return
            except subprocess.TimeoutExpired:
                if time.monotonic() > give_up:  # bwrap itself is stuck: its whole group goes
                    with contextlib.suppress(OSError):
                        os.killpg(pid, signal.SIGKILL)
                    self._popen.wait()
                    return

    def _close(self, fd: int) -> None:
        if fd in self._open:
            self._open.discard(fd)
            os.close(fd)


def _children(pid: int, uid: int | None) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except (OSError, ValueError):  # a kernel without CONFIG_PROC_CHILDREN
        return [p for p in uid_processes(uid) if p != pid] if uid is not None else []


def uid_processes(uid: int) -> list[int]:
    """PIDs of every process running as ``uid`` (zombies included)."""
    found = []
    with os.scandir("/proc") as entries:
        for entry in entries:
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    if entry.stat(follow_symlinks=False).st_uid == uid:
                        found.append(int(entry.name))
    return found


def sweep_uid(uid: int) -> None:
    """SIGKILL every process of a slot's uid: whatever escaped the process group and the PID
    namespace (nothing should) dies here, before the slot's next sandbox starts."""
    for pid in uid_processes(uid):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def claim_uids(base: int, count: int) -> list[tuple[int, int]]:
    """Reserve ``count`` unused uids at or above ``base`` for this process's slots.

    Each is held by an exclusive flock on a lock file, so pools in other service processes on
    the host (several uvicorn workers) never share a uid, and the lock goes with the process.
    A uid that names a real account or has running processes is never taken: the sweep would
    kill them. Returns ``(uid, lock_fd)`` pairs.
    """
    directory = _lock_dir()
    claimed: list[tuple[int, int]] = []
    for uid in range(base, base + 10_000):
        if len(claimed) == count:
            break
        if _is_account(uid):
            continue
        fd = os.open(directory / f"{uid}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # another service process holds it
            os.close(fd)
            continue
        if uid_processes(uid):
            os.close(fd)
            continue
        claimed.append((uid, fd))
    if len(claimed) < count:
        for _, fd in claimed:
            os.close(fd)
        raise RuntimeError(f"no {count} free sandbox uids at or above {base}")
    return claimed


def _is_account(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True


def _lock_dir() -> Path:
    for base in ("/run/lock", tempfile.gettempdir()):
        if os.access(base, os.W_OK):
            directory = Path(base) / "bestofk-sandbox-uids"
            directory.mkdir(mode=0o700, exist_ok=True)
            return directory
    raise RuntimeError("no writable directory for the sandbox uid locks")
