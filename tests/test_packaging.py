"""What ``pip install .`` ships: the wheel built from what the images copy holds the demo model,
and an install of it serves the demo (name, profiles) from any directory, with no checkout."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from bestofk.service.bundled_model import DEMO_MODEL, is_demo_model
from bestofk.service.settings import DEMO_NAME, Settings
from bestofk.tooling.procs import ROOT

MODEL_FILES = sorted(
    p.name for p in (ROOT / "demo" / "model").iterdir() if p.suffix in (".json", ".safetensors")
)
"""What vLLM reads from the model folder (beside it: the package's ``__init__.py``)."""


def image_context(into: Path) -> Path:
    """The files the Dockerfile's base stage copies before ``pip install .``, laid out as it
    lays them out: a wheel built from here is the one the images install."""
    base = re.split(r"^FROM ", (ROOT / "Dockerfile").read_text(), flags=re.M)[1]
    assert base.split()[2] == "base", "the first stage is the one the others build on"
    copies = re.findall(r"^COPY (.+) (\S+)$", base, flags=re.M)
    assert copies
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    for sources, dest in copies:
        for source in sources.split():
            target = into / dest / Path(source).name if dest.endswith("/") else into / dest
            if (ROOT / source).is_dir():
                shutil.copytree(ROOT / source, target, ignore=skip)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / source, target)
    return into


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``pip wheel --no-deps .`` over the image's context (the venv's setuptools: offline)."""
    context = image_context(tmp_path_factory.mktemp("context"))
    out = tmp_path_factory.mktemp("wheel")
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "--wheel-dir", str(out), str(context)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-3000:]
    # setuptools warns of a data folder that is not a package of its own: a later one drops it.
    assert "would be ignored" not in build.stderr, build.stderr[-3000:]
    [built] = out.glob("bestofk-*.whl")
    return built


def test_the_wheel_holds_the_demo_model_and_only_bestofk(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        shipped = {n.removeprefix("bestofk/demo_model/") for n in names if "/demo_model/" in n}
        assert shipped == {"__init__.py", *MODEL_FILES}
        templates = {p.name for p in (ROOT / "service" / "ui" / "templates").glob("*.html")}
        prefix = "bestofk/service/ui/templates/"
        shipped_templates = {n.removeprefix(prefix) for n in names if n.startswith(prefix)}
        assert templates and shipped_templates == {"__init__.py", *templates}
        for name in MODEL_FILES:
            data = archive.read(f"bestofk/demo_model/{name}")
            assert data == (ROOT / "demo" / "model" / name).read_bytes(), name
    # No generic top-level package (`service`, `verifiers`, `demo`) next to bestofk.
    dist_info = wheel.name.split("-py3")[0] + ".dist-info"
    assert {n.split("/")[0] for n in names} == {"bestofk", dist_info}


def test_an_installed_wheel_serves_the_demo_from_any_directory(wheel: Path, tmp_path: Path) -> None:
    """The wheel unpacked as pip would into site-packages, run from an empty directory: the
    default model is the packaged one, served as ``demo`` with its profiles."""
    site = tmp_path / "site-packages"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = (
        "import json, importlib.util, bestofk.service\n"
        "from bestofk.service.server import check_model\n"
        "from bestofk.service.settings import Settings\n"
        "s = Settings()\n"
        "check_model(s.model)\n"
        "print(json.dumps({'package': bestofk.service.__file__, 'model': s.model,\n"
        "  'name': s.model_name, 'profiles': sorted(s.profiles), 'tools': s.tool_call_parser,\n"
        "  'bare': [n for n in ('service', 'verifiers', 'demo')\n"
        "           if importlib.util.find_spec(n)]}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-P", "-c", code], cwd=elsewhere, env={"PYTHONPATH": str(site)},
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    seen = json.loads(out.stdout)
    assert Path(seen["package"]).is_relative_to(site), "the wheel's code, not the checkout's"
    assert Path(seen["model"]) == site / "bestofk" / "demo_model"
    assert seen["name"] == DEMO_NAME
    assert {"digits", "think"} <= set(seen["profiles"])
    assert seen["tools"] == "hermes"
    assert seen["bare"] == []


def test_a_copy_of_the_demo_model_is_the_demo_and_an_edited_one_is_not(tmp_path: Path) -> None:
    """As the CPU image's ``BESTOFK_MODEL=/app/demo/model`` beside the packaged model."""
    copy = tmp_path / "copy"
    shutil.copytree(DEMO_MODEL, copy, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    settings = Settings(model=str(copy))
    assert settings.model_name == DEMO_NAME
    assert "digits" in settings.profiles

    edited = tmp_path / "edited"
    shutil.copytree(copy, edited)
    config = (edited / "config.json").read_bytes()
    (edited / "config.json").write_bytes(config.replace(b"{", b"[", 1))  # same size
    assert not is_demo_model(str(edited))
    assert Settings(model=str(edited)).model_name == "edited"
    assert "digits" not in Settings(model=str(edited)).profiles

    (copy / "chat_template.jinja").write_text("{{ messages }}")  # a file vLLM would read
    is_demo_model.cache_clear()
    assert not is_demo_model(str(copy))
    assert not is_demo_model("Qwen/Qwen3-8B")
