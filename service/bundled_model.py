"""The bundled demo model: where the installed package holds it, and whether a model is it.

The model ships as the data package ``bestofk.demo_model`` (``demo/model`` in a checkout), so
``pip install bestofk`` serves it with no checkout around. It is recognised by its files, not
by a path string: a copy of it (the CPU image's ``/app/demo/model``, a checkout's
``demo/model`` beside an installed wheel) is the demo too.
"""

from __future__ import annotations

import filecmp
import functools
import importlib.util
from pathlib import Path

PACKAGE = "bestofk.demo_model"


def _locate() -> Path:
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        # An editable install made before the package existed maps only the older ones.
        raise ImportError(
            f"{PACKAGE} (the bundled demo model) is not installed: reinstall bestofk"
            " (in a checkout: `make install`)"
        )
    return Path(spec.origin).resolve().parent


DEMO_MODEL = _locate()
"""The bundled model's folder, resolved."""


def _model_files(folder: Path) -> list[str]:
    """The files vLLM reads: all but the package's own ``__init__.py`` and caches."""
    return sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix != ".py")


@functools.cache
def is_demo_model(model: str) -> bool:
    """Whether ``model`` names the bundled model: its folder, or a folder holding the same
    files with the same bytes (sizes are compared first, so another model costs a few stats)."""
    path = Path(model).expanduser()
    if not path.is_dir():
        return False
    path = path.resolve()
    if path == DEMO_MODEL:
        return True
    names = _model_files(DEMO_MODEL)
    if _model_files(path) != names:
        return False
    same, _, _ = filecmp.cmpfiles(path, DEMO_MODEL, names, shallow=False)
    return len(same) == len(names)
