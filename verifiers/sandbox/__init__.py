"""The code sandbox: candidate code runs in bwrap, reports over a pipe, and is judged out here.

Modules, in the order a run passes through them:

- :mod:`~verifiers.sandbox.pool`: slots, the queue, warm sandboxes, outcome counting;
- :mod:`~verifiers.sandbox.bwrap`: the command line (namespaces, mounts, uid, limits);
- :mod:`~verifiers.sandbox.seccomp`: the syscall deny-list;
- :mod:`~verifiers.sandbox.process`: one sandbox's life: feed, read, deadline, kill, sweep;
- :mod:`~verifiers.sandbox.driver`: what runs inside, and its threat model;
- :mod:`~verifiers.sandbox.protocol`: the pipes between them;
- :mod:`~verifiers.sandbox.judge`: expected values compared with what came back.
"""

from verifiers.sandbox.bwrap import Limits
from verifiers.sandbox.errors import SandboxBusyError, SandboxUnavailableError
from verifiers.sandbox.judge import RunResult, TestResult
from verifiers.sandbox.pool import SandboxPool, default_pool
from verifiers.sandbox.protocol import CallCase, IoCase, Job

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
