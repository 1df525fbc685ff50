"""The layout the README describes: one import path, a server package that is only the server."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = {
    "service": "bestofk.service",
    "verifiers": "bestofk.verifiers",
    "tooling": "bestofk.tooling",
    "demo/model": "bestofk.demo_model",  # package data only: the demo model
}


def test_every_package_folder_ships_under_bestofk() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert config["package-dir"] == {name: folder for folder, name in FOLDERS.items()}
    on_disk = {
        ".".join([name, *init.relative_to(ROOT / folder).parts[:-1]])
        for folder, name in FOLDERS.items()
        for init in (ROOT / folder).rglob("__init__.py")
    }
    assert set(config["packages"]) == on_disk


def test_src_links_every_package_folder() -> None:
    """``PYTHONPATH=src`` (mypy, worktrees on the shared venv) sees what an install maps."""
    for folder, name in FOLDERS.items():
        link = ROOT / "src" / Path(*name.split("."))
        assert link.is_symlink() and link.resolve() == (ROOT / folder).resolve(), name


def test_the_server_imports_no_tooling_at_import_time() -> None:
    """The CLI loads bench, eval and train lazily, inside the commands that use them."""
    for folder in ("service", "verifiers"):
        for file in (ROOT / folder).rglob("*.py"):
            for node in ast.parse(file.read_text()).body:  # module level only
                names = (
                    [node.module or ""]
                    if isinstance(node, ast.ImportFrom)
                    else [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else []
                )
                assert not any(n.startswith("bestofk.tooling") for n in names), file


def test_importing_the_server_loads_no_bare_top_level_names(tmp_path: Path) -> None:
    code = (
        "import sys, bestofk.service.app, bestofk.service.cli;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in"
        " ('service', 'verifiers', 'tooling')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_the_images_copy_every_package_folder() -> None:
    """``pip install .`` in the Dockerfile needs every folder the package maps."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    ignored = (ROOT / ".dockerignore").read_text().split()
    for folder in FOLDERS:
        assert dockerfile.count(f"COPY {folder} ./{folder}\n") == 2, folder  # base and gpu
        assert folder not in ignored, folder


def test_the_cli_help_loads_no_engine_plotting_or_training_stack(tmp_path: Path) -> None:
    """Each command imports what only it needs inside it: help is instant and works in an
    install without the extras."""
    code = (
        "import sys\n"
        "from bestofk.service.cli import main\n"
        "for argv in (['bestofk', '--help'], ['bestofk', 'serve', '--help']):\n"
        "    sys.argv = argv\n"
        "    try:\n"
        "        main()\n"
        "    except SystemExit as exit:\n"
        "        assert exit.code == 0, exit.code\n"
        "print(sorted({m.split('.')[0] for m in sys.modules}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    loaded = set(ast.literal_eval(out.stdout.strip().splitlines()[-1]))
    assert "typer" in loaded  # the help was rendered
    heavy = {"matplotlib", "torch", "vllm", "trl", "datasets", "transformers", "aiohttp"}
    assert not loaded & heavy, loaded & heavy


def test_the_server_install_pulls_no_tooling_stack() -> None:
    """``pip install bestofk`` is the server: plotting and training are extras, which
    ``make`` installs for the tests."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = " ".join(project["dependencies"])
    for name in ("matplotlib", "trl", "datasets", "torch", "vllm"):
        assert name not in core, name
    assert any(d.startswith("matplotlib") for d in project["optional-dependencies"]["plot"])
    install = next(
        line for line in (ROOT / "Makefile").read_text().splitlines() if " -e '.[" in line
    )
    assert all(extra in install for extra in ("cpu", "test", "train", "plot")), install
