"""Every module imports, and the core package imports without ZenML."""

from __future__ import annotations

import ast
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


# Packages that import zenml when they are imported.
ORCHESTRATION = ("pipelines", "steps", "materializers")
FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)


def _imports(tree: ast.AST) -> list[tuple[int, str, bool]]:
    """(line, absolute module name, runs at import time: outside any function) for every import
    statement and every importlib.import_module / __import__ call of a literal name; relative
    imports stay inside the package and are skipped."""
    out: list[tuple[int, str, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            at_import = not in_function
            if isinstance(child, ast.Import):
                out.extend((child.lineno, a.name, at_import) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                out.append((child.lineno, child.module, at_import))
            elif (
                isinstance(child, ast.Call)
                and getattr(child.func, "attr", getattr(child.func, "id", None))
                in ("import_module", "__import__")
                and child.args
                and isinstance(child.args[0], ast.Constant)
                and isinstance(child.args[0].value, str)
            ):
                out.append((child.lineno, child.args[0].value, at_import))
            visit(child, in_function or isinstance(child, FUNCTIONS))

    visit(tree, False)
    return out


def test_core_source_never_imports_zenml():
    """The training core must run standalone (benchmarks, bare GPU boxes). Read from the source,
    so it takes milliseconds and also sees imports inside functions: no module under tuneline/
    imports zenml anywhere, nor, outside a function, the packages that import it. The import-time
    check in a fresh interpreter (below, slow tier) adds only what no source shows: a third-party
    library importing zenml."""
    offenders = []
    for path in sorted((ROOT / "tuneline").rglob("*.py")):
        for line, name, at_import in _imports(ast.parse(path.read_text(), str(path))):
            top = name.split(".")[0]
            if top == "zenml" or (at_import and top in ORCHESTRATION):
                offenders.append(f"{path.relative_to(ROOT)}:{line}: {name}")
    assert not offenders, offenders


@pytest.mark.slow
def test_core_never_imports_zenml():
    """The training core must run standalone (benchmarks, bare GPU boxes). A fresh interpreter
    importing every core module (~20 s of imports); test_core_source_never_imports_zenml proves
    the same from the source in the default tier."""
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
