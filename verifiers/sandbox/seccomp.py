"""The seccomp deny-list, compiled once to a BPF program that bwrap loads (``--seccomp FD``).

A deny-list on top of the other walls: the sandbox has no network namespace to reach, no
capabilities and no ``/proc``; these rules take away the kernel interfaces that would matter if
one of those walls had a hole (ptrace and friends to reach into the driver, new namespaces and
mounts, kernel modules and keyrings, io_uring, which bypasses the syscall filter) and every
socket family but AF_UNIX. Denied calls fail with EPERM (EACCES for sockets) rather than kill
the process, so the candidate sees an ordinary error and the verdict an ordinary failure.
"""

from __future__ import annotations

import errno
import os
import socket
from functools import cache

from bestofk.verifiers.sandbox.errors import SandboxUnavailableError

DENIED = (
    "ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd", "kcmp",
    "mount", "umount2", "pivot_root", "chroot", "move_mount", "open_tree", "fsopen", "fsconfig",
    "fsmount", "fspick", "mount_setattr", "unshare", "setns", "open_by_handle_at",
    "name_to_handle_at", "kexec_load", "kexec_file_load", "init_module", "finit_module",
    "delete_module", "bpf", "perf_event_open", "userfaultfd", "keyctl", "add_key",
    "request_key", "personality", "acct", "swapon", "swapoff", "reboot", "syslog", "quotactl",
    "quotactl_fd", "lookup_dcookie", "iopl", "ioperm", "settimeofday", "clock_settime",
    "clock_adjtime", "adjtimex", "sethostname", "setdomainname", "vhangup", "io_uring_setup",
    "io_uring_enter", "io_uring_register", "fanotify_init",
)  # fmt: skip
CLONE_NAMESPACES = (
    0x00020000,  # CLONE_NEWNS
    0x02000000,  # CLONE_NEWCGROUP
    0x04000000,  # CLONE_NEWUTS
    0x08000000,  # CLONE_NEWIPC
    0x10000000,  # CLONE_NEWUSER
    0x20000000,  # CLONE_NEWPID
    0x40000000,  # CLONE_NEWNET
)
PR_SET_DUMPABLE = 4
"""Denied so that every sandbox process stays visible to the slot-uid sweep in /proc."""
TIOCSTI = 0x5412


@cache
def deny_list_program() -> bytes:
    """The compiled filter; raises SandboxUnavailableError when libseccomp is missing."""
    try:
        import pyseccomp as sc  # type: ignore[import-untyped]
    except (ImportError, RuntimeError) as exc:  # RuntimeError: libseccomp.so not found
        raise SandboxUnavailableError(
            f"seccomp is unavailable ({exc}): `pip install pyseccomp` and "
            "`apt-get install libseccomp2`, or set BESTOFK_UNSAFE_NO_SANDBOX=1 (unsafe)"
        ) from None
    flt = sc.SyscallFilter(sc.ALLOW)
    for name in DENIED:
        try:
            flt.add_rule(sc.ERRNO(errno.EPERM), name)
        except (OSError, ValueError):  # not a syscall on this architecture
            continue
    flt.add_rule(sc.ERRNO(errno.EACCES), "socket", sc.Arg(0, sc.NE, socket.AF_UNIX))
    for flag in CLONE_NAMESPACES:
        flt.add_rule(sc.ERRNO(errno.EPERM), "clone", sc.Arg(0, sc.MASKED_EQ, flag, flag))
    # clone3 passes its flags in memory, out of the filter's reach: ENOSYS makes libc fall
    # back to clone, whose flags are checked above.
    flt.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
    flt.add_rule(sc.ERRNO(errno.EPERM), "prctl", sc.Arg(0, sc.EQ, PR_SET_DUMPABLE))
    flt.add_rule(sc.ERRNO(errno.EPERM), "ioctl", sc.Arg(1, sc.EQ, TIOCSTI))
    fd = os.memfd_create("seccomp")
    try:
        with os.fdopen(os.dup(fd), "wb") as sink:
            flt.export_bpf(sink)
        os.lseek(fd, 0, os.SEEK_SET)
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)
