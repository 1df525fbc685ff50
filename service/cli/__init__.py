"""The ``bestofk`` command line: one module per command, as vLLM's ``entrypoints/cli/``.

``main`` builds the typer app and dispatches; ``serve``, ``generate``, ``evaluate`` (``bestofk
eval``), ``bench``, ``export``, ``stats`` and ``train`` each hold one command and import what
only they need inside it, so ``bestofk --help`` loads no engine, plotting or training stack;
``client`` is the HTTP client the client commands share, ``common`` the console and the
one-line errors.
"""

from __future__ import annotations

from bestofk.service.cli.main import app, main

__all__ = ["app", "main"]
