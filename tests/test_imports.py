"""Every module imports, and the core package imports without ZenML."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def all_modules() -> list[str]:
    mods = []
    for pkg in ("tuneline", "steps", "pipelines", "materializers"):
        mods.append(pkg)
        for info in pkgutil.walk_packages([str(ROOT / pkg)], prefix=f"{pkg}."):
            mods.append(info.name)
    return mods


@pytest.mark.parametrize("name", all_modules())
def test_module_imports(name):
    importlib.import_module(name)


def test_core_never_imports_zenml():
    """The training core must run standalone (benchmarks, bare GPU boxes)."""
    core = [m for m in all_modules() if m.startswith("tuneline")]
    code = (
        "import sys, importlib\n"
        f"for m in {core!r}: importlib.import_module(m)\n"
        "bad = [m for m in sys.modules if m == 'zenml' or m.startswith('zenml.')]\n"
        "print(bad); sys.exit(1 if bad else 0)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_run_help_is_cheap():
    """No stack lookups or network at import: --help answers without touching ZenML state."""
    r = subprocess.run([sys.executable, "run.py", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0 and "--config" in r.stdout
