"""The code sandbox: candidate code runs in bwrap, reports over a pipe, and is judged out here.

Modules, in the order a run passes through them:

- :mod:`~bestofk.verifiers.sandbox.pool`: slots, the queue, warm sandboxes, outcome counting;
- :mod:`~bestofk.verifiers.sandbox.bwrap`: the command line (namespaces, mounts, uid, limits);
- :mod:`~bestofk.verifiers.sandbox.seccomp`: the syscall deny-list;
- :mod:`~bestofk.verifiers.sandbox.process`: one sandbox's life: feed, read, deadline, kill, sweep;
- :mod:`~bestofk.verifiers.sandbox.driver`: what runs inside, and its threat model;
- :mod:`~bestofk.verifiers.sandbox.protocol`: the pipes between them;
- :mod:`~bestofk.verifiers.sandbox.grading`: expected values compared with what came back.
"""

from bestofk.verifiers.sandbox.bwrap import Limits
from bestofk.verifiers.sandbox.errors import SandboxBusyError, SandboxUnavailableError
from bestofk.verifiers.sandbox.grading import RunResult, TestResult
from bestofk.verifiers.sandbox.pool import SandboxPool, default_pool
from bestofk.verifiers.sandbox.protocol import CallCase, IoCase, Job

__all__ = [
    "CallCase",
    "IoCase",
    "Job",
    "Limits",
    "RunResult",
    "SandboxBusyError",
    "SandboxPool",
    "SandboxUnavailableError",
    "TestResult",
    "default_pool",
]
