"""The sandbox's errors that callers handle.

Exception
└── SandboxBusyError          every slot busy and the queue full: the caller's capacity error
RuntimeError
└── SandboxUnavailableError   no bwrap / seccomp here: the verdict says how to install them
"""

from __future__ import annotations

import math

INSTALL_HINT = (
    "install it with `apt-get install bubblewrap`, or set BESTOFK_UNSAFE_NO_SANDBOX=1 to run "
    "candidate code without a sandbox (unsafe: only for code you trust)"
)


class SandboxBusyError(Exception):
    """No sandbox slot came free in time; ask the client to come back in ``retry_after_s``.

    The sandbox is a leaf: ``unit_tests`` turns this into the verifiers' capacity error."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = float(max(1, math.ceil(retry_after_s)))


class SandboxUnavailableError(RuntimeError):
    """The sandbox cannot run on this machine; the message says what to install."""
