"""The sandbox's command line: limits, the interpreter, the uid switch and every bwrap flag.

Each run is ``setpriv --reuid=U --regid=U --clear-groups bwrap ... python3 -I -S -X utf8 -c
BOOT FDS LIMITS``, BOOT loading the precompiled driver. It gets an unprivileged host uid per
slot (RLIMIT_NPROC is not enforced for root, and the uid is how leftovers are found), every
namespace unshared (no network, its own PID space with the driver as PID 1), a clean
environment, a new session (no terminal to inject into), read-only ``/usr`` with
``/usr/local`` hidden, a read-only root, no ``/proc`` (nothing to reopen another process's
descriptors or memory through), size-capped private ``/tmp`` and ``/work``, the seccomp
deny-list, and resource limits the driver sets on itself before it reads its job. Without
bwrap, and only when the operator sets ``BESTOFK_UNSAFE_NO_SANDBOX=1``, the driver runs bare:
same limits and protocol, none of the isolation.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from bestofk.verifiers.sandbox.errors import INSTALL_HINT, SandboxUnavailableError
from bestofk.verifiers.sandbox.seccomp import deny_list_program

UNSAFE_ENV = "BESTOFK_UNSAFE_NO_SANDBOX"


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-run resource limits."""

    memory_bytes: int = 256 << 20
    """RLIMIT_AS of every process in the sandbox."""
    processes: int = 16
    """RLIMIT_NPROC: processes and threads of the slot's uid inside the sandbox."""
    file_bytes: int = 16 << 20
    """RLIMIT_FSIZE: the largest file the code may write."""
    open_files: int = 64
    """RLIMIT_NOFILE."""
    cpu_s: int = 65
    """RLIMIT_CPU ceiling; the driver lowers it to the job's time budget."""
    tmp_bytes: int = 32 << 20
    """Size of each private tmpfs (``/tmp`` and ``/work``)."""
    output_bytes: int = 1 << 20
    """Stdout and stderr the service reads before it kills the run."""


_COMPILE = (
    "import marshal, sys; "
    "sys.stdout.buffer.write(marshal.dumps(compile(sys.stdin.read(), 'driver.py', 'exec')))"
)


@cache
def compiled_driver(python: str) -> tuple[int, int]:
    """A sealed memfd with the driver compiled by the sandbox's interpreter, and its size.

    Compiling the driver's source on every run costs more than starting Python; unmarshalling
    the code object costs a fraction of a millisecond. The sandbox gets the memfd read-only
    through ``pass_fds`` and closes it before anything else runs, so it needs no file from
    the service's disk.
    """
    source = (Path(__file__).parent / "driver.py").read_bytes()
    try:
        code = subprocess.run(
            [python, "-I", "-S", "-c", _COMPILE], input=source, capture_output=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise SandboxUnavailableError(
            f"{python} cannot compile the sandbox driver: {exc}"
        ) from None
    fd = os.memfd_create("bestofk-driver", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    view = memoryview(code)
    while view:
        view = view[os.write(fd, view) :]
    seals = fcntl.F_SEAL_WRITE | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
    return fd, len(code)


def find_bwrap() -> str | None:
    """The bwrap binary (Debian package ``bubblewrap``), or None."""
    return shutil.which("bwrap") or shutil.which("bwrap", path="/usr/bin:/bin")


def find_python() -> str:
    """The interpreter candidate code runs on: Debian's ``/usr/bin/python3`` when present.

    Candidate code needs only the standard library, and the system interpreter sits under the
    read-only ``/usr`` that every sandbox gets; a virtualenv's interpreter often lives in a
    directory (``/root/...``) the unprivileged slot uid cannot even traverse.
    """
    for path in ("/usr/bin/python3", shutil.which("python3")):
        if path and os.access(path, os.X_OK):
            return os.path.realpath(path)
    raise SandboxUnavailableError("no python3 interpreter found for the sandbox")


@dataclass(frozen=True, slots=True)
class Launcher:
    """Everything needed to start sandboxes on this machine, resolved once per pool."""

    python: str
    limits: Limits
    bwrap: str | None
    """None only in unsafe mode."""
    setpriv: str | None
    """Used to switch to the slot's uid when the service runs as root."""
    seccomp: bytes
    driver: tuple[int, int]
    """The compiled driver's memfd and size (see :func:`compiled_driver`)."""

    @classmethod
    def detect(cls, limits: Limits, unsafe: bool) -> Launcher:
        """Find bwrap, setpriv and python; raises SandboxUnavailableError with the fix."""
        bwrap = find_bwrap()
        if bwrap is None and not unsafe:
            raise SandboxUnavailableError(f"bubblewrap (bwrap) is not installed: {INSTALL_HINT}")
        setpriv = shutil.which("setpriv") if os.geteuid() == 0 else None
        if os.geteuid() == 0 and setpriv is None:
            raise SandboxUnavailableError(
                "setpriv is not installed (the sandbox drops root with it): "
                "`apt-get install util-linux`"
            )
        seccomp = deny_list_program() if bwrap is not None else b""
        python = find_python()
        return cls(python, limits, bwrap, setpriv, seccomp, compiled_driver(python))

    @property
    def sandboxed(self) -> bool:
        """False in unsafe mode."""
        return self.bwrap is not None

    def argv(self, fds: tuple[int, int, int], seccomp_fd: int | None, uid: int | None) -> list[str]:
        """The command line for one sandbox; ``fds`` are the job, result and tests pipes."""
        lim = self.limits
        fd, size = self.driver
        boot = f"import marshal,os;c=os.pread({fd},{size},0);os.close({fd});exec(marshal.loads(c))"
        python = [self.python, "-I", "-S", "-X", "utf8", "-c", boot]
        python += [str(n) for n in fds]
        python += [str(n) for n in (lim.memory_bytes, lim.processes, lim.file_bytes)]
        python += [str(lim.open_files), str(lim.cpu_s)]
        prefix = []
        if uid is not None and self.setpriv is not None:
            prefix = [self.setpriv, f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
        if self.bwrap is None:
            return prefix + python
        sandbox = [
            self.bwrap, "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent",
            "--new-session", "--clearenv", "--as-pid-1", "--cap-drop", "ALL",
            "--hostname", "sandbox",
            *_system_mounts(self.python),
            "--dev", "/dev", "--remount-ro", "/dev",
            "--size", str(lim.tmp_bytes), "--tmpfs", "/tmp",
            "--size", str(lim.tmp_bytes), "--tmpfs", "/work",
            "--chdir", "/work", "--remount-ro", "/",
        ]  # fmt: skip
        if seccomp_fd is not None:
            sandbox += ["--seccomp", str(seccomp_fd)]
        return prefix + sandbox + python


@cache
def _system_mounts(python: str) -> tuple[str, ...]:
    """Read-only ``/usr`` (and the merged-usr links), ``/usr/local`` hidden unless needed."""
    args = ["--ro-bind", "/usr", "/usr"]
    for path in ("/bin", "/lib", "/lib64"):
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    if not python.startswith("/usr/"):
        prefix = str(Path(python).parent.parent)  # .../bin/python3.11 -> ...
        args += ["--ro-bind", prefix, prefix]
    elif not python.startswith("/usr/local/") and os.path.isdir("/usr/local"):
        # /usr/local holds whatever the host installed (toolchains, configs): not needed.
        args += ["--tmpfs", "/usr/local", "--remount-ro", "/usr/local"]
    return tuple(args)
