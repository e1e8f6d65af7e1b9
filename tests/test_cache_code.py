"""A step's cache key covers the project code it runs, so editing the core re-runs what it changes.

ZenML's own key covers only the step function; the steps' cache policies add the modules
they run (`steps/_caching.py`). The edits are made in a copy of the project, run from there
in a subprocess: the working tree is never touched.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.runner import pipeline_for, pipeline_steps
from steps._caching import PROJECT_PACKAGES, code_dependencies, module_file, resource_files
from tuneline.config import PipelineConfig, load_config

ROOT = Path(__file__).resolve().parent.parent
COPIED = ("tuneline", "steps", "pipelines", "materializers", "configs", "data", "assets", "tests")
FINGERPRINTS = {"data": "d", "local_files": "l"}


def copy_project(dest: Path) -> Path:
    for name in COPIED:
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("run.py", "README.md", "pyproject.toml"):
        shutil.copy2(ROOT / name, dest / name)
    return dest


def relative_file(module: str) -> str:
    return str(module_file(module).relative_to(ROOT))


def core_modules() -> dict[str, str]:
    """The core module each stage's step calls into, found from the functions the steps call."""
    import steps.evaluate_model as evaluate_step
    import steps.tokenize_dataset as tokenize_step
    from tuneline.train import train

    return {
        "tokenize": tokenize_step.tokenize_records.__module__,
        "train": train.__module__,
        "evaluate": evaluate_step.evaluate_sft.__module__,
    }


def all_steps() -> dict[str, object]:
    out = {}
    for config in ("configs/sft.yaml", "configs/dpo.yaml"):
        cfg = load_config(config)
        out.update(pipeline_steps(pipeline_for(cfg), PipelineConfig.of(cfg), FINGERPRINTS))
    return out


def test_each_step_depends_on_the_code_it_runs():
    steps = all_steps()
    deps = {
        name: {s.module for s in step.configuration.cache_policy.source_dependencies}
        for name, step in steps.items()
    }
    core = core_modules()
    for name, step in steps.items():
        own = step.entrypoint.__module__
        assert own in deps[name], f"{name} does not hash its own module"
        assert deps[name] <= set(code_dependencies(own))
        assert all(m.split(".")[0] in PROJECT_PACKAGES for m in deps[name]), deps[name]
        policy = step.configuration.cache_policy
        assert policy.include_step_code and policy.include_step_parameters and policy.include_artifact_values
    assert core["tokenize"] in deps["tokenize_dataset"]
    assert core["train"] in deps["train_model"] and core["train"] in deps["train_preferences"]
    assert "steps._training" in deps["train_model"] and "steps._training" in deps["train_preferences"]
    assert core["evaluate"] in deps["evaluate_model"] and core["evaluate"] in deps["evaluate_preferences"]
    # Upstream steps never depend on downstream code: editing it must not re-run them.
    for name in ("load_dataset", "format_records", "tokenize_dataset"):
        assert core["train"] not in deps[name] and core["evaluate"] not in deps[name], name
    assert core["tokenize"] not in deps["load_dataset"]
    for name in ("train_model", "train_preferences", "register_model"):
        assert core["evaluate"] not in deps[name], name


def test_files_read_by_path_are_hashed_by_content():
    """Metric scripts load by path (never imported): their content is part of the key of
    whichever step runs the module that loads them."""
    from tuneline.evaluate import scoring

    files = resource_files(scoring.__name__)
    assert files and all(f.is_file() for f in files)
    assert any(f.name == "rouge.py" for f in files)
    assert all(scoring.METRICS_DIR in f.parents for f in files)


KEYS_SCRIPT = """
import json, os, sys
from pathlib import Path
from pipelines.stack import configure_environment
configure_environment()
from zenml.client import Client
from zenml.config.compiler import Compiler
from zenml.config.pipeline_run_configuration import PipelineRunConfiguration
from zenml.orchestrators.cache_utils import generate_cache_key
from pipelines.runner import pipeline_for
from tuneline.config import PipelineConfig, load_config

cfg = load_config("configs/sft.yaml")
pipe = pipeline_for(cfg)
pipe.prepare(config=PipelineConfig.of(cfg), fingerprints={"data": "d", "local_files": "l"})
stack = Client().active_stack
snapshot = Compiler().compile(pipeline=pipe, stack=stack, run_configuration=PipelineRunConfiguration())


def keys():
    return {
        name: generate_cache_key(step, {}, stack.artifact_store, Client().active_project.id)
        for name, step in snapshot.step_configurations.items()
    }


before = keys()
for edit in sys.stdin.read().split():  # the test sends the files to edit once it knows them
    path = Path(edit)
    path.write_bytes(path.read_bytes() + b"\\n")  # one byte
    after = keys()
    print(json.dumps({"edited": edit, "changed": sorted(k for k in after if after[k] != before[k])}))
    before = after
# Everything under test is printed: skip the interpreter's teardown (seconds of freeing what
# ZenML imported, torch and MLflow among it).
sys.stdout.flush()
os._exit(0)
"""


@pytest.fixture(scope="module", autouse=True)
def edited_keys(request, tmp_path_factory):
    """keys.py in a copy of the project, started before this module's first test so that its
    slow part (a new ZenML store, the compile, the first keys: tens of seconds on 2 CPUs) runs
    beside the tests above in this process; it waits on stdin for the files to edit, which
    take importing the steps to find. Yields (edits, the process, its stdout, its stderr), or
    None when the test that reads them is not selected."""
    wanted = test_a_one_byte_edit_changes_the_keys_of_exactly_the_steps_that_run_that_code.__name__
    if not any(getattr(item, "originalname", None) == wanted for item in request.session.items):
        yield None
        return
    tmp = tmp_path_factory.mktemp("cache-keys")
    project = copy_project(tmp / "project")
    (project / "keys.py").write_text(KEYS_SCRIPT)
    env = {**os.environ, "TUNELINE_HOME": str(tmp / "home"), "PYTHONPATH": str(project)}
    env.pop("ZENML_CONFIG_PATH", None)
    out, err = tmp / "keys.out", tmp / "keys.err"
    with open(out, "w") as o, open(err, "w") as e:
        proc = subprocess.Popen(
            [sys.executable, "keys.py"],
            cwd=project,
            env=env,
            stdin=subprocess.PIPE,
            stdout=o,
            stderr=e,
            text=True,
        )
    try:
        core = core_modules()
        edits = [
            relative_file(core["tokenize"]),
            relative_file(core["evaluate"]),
            "README.md",
            "tests/conftest.py",
        ]
        proc.stdin.write("\n".join(edits))
        proc.stdin.close()
        yield edits, proc, out, err
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_a_one_byte_edit_changes_the_keys_of_exactly_the_steps_that_run_that_code(edited_keys):
    """ZenML's own cache-key function, on the compiled SFT pipeline, in a copy of the project."""
    edits, proc, out, err = edited_keys
    assert proc.wait(timeout=900) == 0, err.read_text()[-4000:]
    changed = {
        row["edited"]: set(row["changed"]) for row in map(json.loads, out.read_text().splitlines()[-4:])
    }
    # Its inputs are held fixed here; in a run, the steps after it also re-run on their new inputs.
    tokenize_edit = changed[edits[0]]
    assert "tokenize_dataset" in tokenize_edit
    # register_model logs the MLflow model whose serving code renders prompts with tokenize: it
    # runs that code too. Loading data does not.
    assert "register_model" in tokenize_edit and "load_dataset" not in tokenize_edit, tokenize_edit
    assert changed[edits[1]] == {"evaluate_model"}
    assert changed["README.md"] == set() and changed["tests/conftest.py"] == set()


TINY = [
    *("--set", "train.max_steps=2", "--set", "train.eval_steps=1", "--set", "train.save_steps=1"),
    *("--set", "eval.max_samples=2", "--set", "eval.max_new_tokens=4", "--set", "registry.model_name=cache"),
]


def run_copy(project: Path, home: Path) -> tuple[set[str], set[str]]:
    env = {**os.environ, "TUNELINE_HOME": str(home), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(project)}
    for key in ("MLFLOW_TRACKING_URI", "ZENML_CONFIG_PATH"):
        env.pop(key, None)
    r = subprocess.run(
        [sys.executable, "run.py", "--config", "configs/sft.yaml", *TINY],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]

    def listed(prefix: str) -> set[str]:
        line = next((ln for ln in r.stdout.splitlines() if ln.strip().startswith(prefix)), "")
        return {s.strip() for s in line.split(":", 1)[-1].split(",") if s.strip()}

    return listed("cached steps"), listed("executed steps")


def edit_function(path: Path, name: str) -> None:
    """Add a statement to function `name` (after its docstring): a real edit that changes nothing it computes."""
    lines = path.read_text().splitlines(keepends=True)
    func = next(
        n for n in ast.walk(ast.parse("".join(lines))) if isinstance(n, ast.FunctionDef) and n.name == name
    )
    first = func.body[0]
    has_doc = isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
    at = first.end_lineno if has_doc else first.lineno - 1
    indent = " " * first.col_offset
    lines.insert(at, f"{indent}edited_for_the_cache_test = True  # noqa: F841\n")
    path.write_text("".join(lines))


@pytest.mark.slow
def test_a_core_edit_reruns_its_step_and_what_follows_and_a_readme_edit_reruns_nothing(tmp_path):
    """Three real runs of the SFT pipeline from a copy of the project (about 3 minutes on 2 CPUs)."""
    from tuneline.tokenize import tokenize_dataset

    project = copy_project(tmp_path / "project")
    home = tmp_path / "home"
    cached, executed = run_copy(project, home)
    assert not cached and "tokenize_dataset" in executed

    edit_function(project / relative_file(tokenize_dataset.__module__), tokenize_dataset.__name__)
    cached, executed = run_copy(project, home)
    assert {"tokenize_dataset", "train_model", "evaluate_model", "register_model"} <= executed, executed
    assert "load_dataset" in cached, cached

    (project / "README.md").write_text((project / "README.md").read_text() + "\nAn edited line.\n")
    (project / "tests" / "conftest.py").write_text((project / "tests" / "conftest.py").read_text() + "\n")
    cached, executed = run_copy(project, home)
    assert not executed and "train_model" in cached
