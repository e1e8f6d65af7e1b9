"""Step cache keys that cover the project code a step runs, not only the step function.

ZenML keys a step on its own function source, its parameters and its inputs. The work
happens in `tuneline/`, so an edited tokenizer or training function left every step
"cached (inputs unchanged)" and the old model in use. Each step's cache policy lists
the project modules it runs, found by reading import statements (nothing is executed
to find them), and ZenML hashes their source into the key: editing `tuneline/tokenize/`
re-runs tokenization and everything after it, editing the evaluation code re-runs
evaluation only, and a README or test edit re-runs nothing.

Modules are located through the import system, so this works the same from a clone, an
editable install or an installed wheel. Files read by path are keyed by their path
relative to ZenML's source root, so those keys are per checkout, like `base_dir` is.
"""

from __future__ import annotations

import ast
import functools
import importlib
import importlib.util
import re
import sys
from pathlib import Path
from typing import Any

# Top-level packages whose code can change what a step computes.
PROJECT_PACKAGES = ("tuneline", "steps", "materializers", "pipelines")
_DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+")


@functools.cache
def _package_dirs(top: str) -> tuple[Path, ...]:
    spec = importlib.util.find_spec(top)
    if spec is None or not spec.submodule_search_locations:
        return ()
    return tuple(Path(p) for p in spec.submodule_search_locations)


def module_file(name: str) -> Path | None:
    """The source file of project module `name`, found without importing it; None otherwise."""
    top, *rest = name.split(".")
    if top not in PROJECT_PACKAGES:
        return None
    for root in _package_dirs(top):
        base = root.joinpath(*rest)
        candidates = [base / "__init__.py"] + ([base.with_suffix(".py")] if rest else [])
        for candidate in candidates:
            if candidate.is_file():
                return candidate
    return None


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _nodes(tree: ast.AST):
    """Every node except the bodies of `if TYPE_CHECKING:`, which never run."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


@functools.cache
def _uses(name: str) -> frozenset[str]:
    """Project modules whose code `name` runs: each import resolved to the most specific
    module it names (`from pkg import submodule` -> the submodule; `from pkg import f` ->
    the package, whose own imports then count), and string constants that name a module
    (`python -m tuneline.train.distributed_worker` runs that module's code too)."""
    path = module_file(name)
    if path is None:
        return frozenset()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in _nodes(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parent = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{parent}.{base}" if base else parent
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if alias.name != "*" and module_file(sub) else base)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _DOTTED.fullmatch(node.value):
            found.add(node.value)
    return frozenset(m for m in found if m != name and module_file(m) is not None)


@functools.cache
def _resources(name: str) -> frozenset[Path]:
    """Files a module reads next to itself (`Path(__file__).parent / "metrics"`): in a module
    that uses `__file__`, every string constant naming an entry of its own directory."""
    path = module_file(name)
    if path is None:
        return frozenset()
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    nodes = list(_nodes(tree))
    if not any(isinstance(n, ast.Name) and n.id == "__file__" for n in nodes):
        return frozenset()
    here = path.parent.resolve()
    found: set[Path] = set()
    for node in nodes:
        if not isinstance(node, ast.Constant) or not isinstance(node.value, str):
            continue
        if not node.value.strip() or "\n" in node.value or "\0" in node.value or len(node.value) > 200:
            continue
        entry = (here / node.value).resolve()
        if entry == here or not entry.is_relative_to(here):
            continue
        if entry.is_file():
            found.add(entry)
        elif entry.is_dir():
            found.update(
                f
                for f in entry.rglob("*")
                if f.is_file() and "__pycache__" not in f.parts and f.suffix != ".pyc"
            )
    return frozenset(found)


def _parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


@functools.cache
def _closure(module: str) -> tuple[tuple[str, ...], tuple[Path, ...]]:
    followed: set[str] = set()
    parents: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if name in followed:
            continue
        followed.add(name)
        parents.update(p for p in _parents(name) if module_file(p) is not None)
        todo.extend(_uses(name))
    files = {f for name in followed for f in _resources(name)}
    return tuple(sorted(followed | parents)), tuple(sorted(files))


def code_dependencies(module: str) -> tuple[str, ...]:
    """`module` and every project module it runs, transitively, sorted.

    Importing `a.b.c` also executes the `__init__` of `a` and `a.b`: their text counts, but
    the siblings they re-export count only when this code imports names from the package.
    """
    return _closure(module)[0]


def resource_files(module: str) -> tuple[Path, ...]:
    """Files the modules `module` runs read by path (e.g. the shipped metric scripts)."""
    return _closure(module)[1]


def cache_policy(module: str) -> Any:
    """ZenML's default cache policy plus the source of every module `module` runs and the
    content of every file those modules read by path.

    ZenML loads each module dependency as `package.attribute` when it computes the key, so
    all of them are imported here: a module otherwise imported lazily inside a function
    would not be an attribute of its package yet. Files are hashed by content and never
    imported (a metric script's backend may be absent until that metric is used).
    """
    from zenml.config.cache_policy import CachePolicy
    from zenml.config.source import Source, SourceType

    deps = code_dependencies(module)
    for name in deps:
        if name != module:
            importlib.import_module(name)
    for name in deps:
        parent, _, attr = name.rpartition(".")
        if parent and name != module and getattr(sys.modules[parent], attr, None) is not sys.modules[name]:
            raise RuntimeError(
                f"{parent}.{attr} is not the module {name} (a name in {parent}/__init__.py hides it), "
                f"so ZenML would hash the wrong source into the cache key; rename one of them"
            )
    # An empty file has no source to hash (inspect refuses it) and nothing that could change an output.
    hashed = [name for name in deps if module_file(name).stat().st_size]
    return CachePolicy(
        source_dependencies=[Source(module=name, type=SourceType.UNKNOWN) for name in hashed],
        file_dependencies=[str(f) for f in resource_files(module)] or None,
    )


def step_uses(step: Any, module: str) -> bool:
    """Whether a step's code runs `module` (e.g. logs through `steps._tracking`)."""
    return module in code_dependencies(step.entrypoint.__module__)
