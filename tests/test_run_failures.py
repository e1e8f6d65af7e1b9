"""A failed run's error is read from that run's own record, never from another run of the pipeline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = """
import json, os, sys, uuid
from pipelines.stack import configure_environment
configure_environment()
from zenml import pipeline, step
from pipelines.runner import step_failure
from tuneline.errors import DataError


@step(enable_cache=False)
def fail(message: str, user_error: bool) -> None:
    if user_error:
        raise DataError(message)
    raise ValueError(message)


@pipeline(name="failing_twice")
def failing(message: str, user_error: bool) -> None:
    fail(message=message, user_error=user_error)


runs = []
for message, user_error in (("the older run's bad data", True), ("the newer run's bug", False)):
    name = f"failing_twice-{uuid.uuid4().hex}"
    try:
        failing.with_options(run_name=name)(message=message, user_error=user_error)
    except RuntimeError:
        runs.append((name, message))
for name, message in runs:
    err = step_failure(name)
    print(json.dumps({"run": name, "message": message, "error": str(err), "exit_code": err.exit_code}))
# Everything under test is printed: skip the interpreter's teardown (seconds of freeing what
# ZenML imported, torch and MLflow among it).
sys.stdout.flush()
os._exit(0)
"""


def test_each_failed_run_reports_its_own_error_and_exit_code(tmp_path):
    """The older run failed first; the newer run of the same pipeline failed after it with
    another error. Looking up either by its own run must not return the other's error."""
    script = tmp_path / "failing.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "TUNELINE_HOME": str(tmp_path / "home"), "PYTHONPATH": str(ROOT)}
    env.pop("ZENML_CONFIG_PATH", None)
    r = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 0, r.stderr[-4000:]
    older, newer = (json.loads(line) for line in r.stdout.splitlines() if line.startswith("{"))
    assert "the older run's bad data" in older["error"] and older["run"] in older["error"]
    assert "DataError" in older["error"] and older["exit_code"] == 2
    assert "the newer run's bug" in newer["error"] and newer["run"] in newer["error"]
    assert "ValueError" in newer["error"] and newer["exit_code"] == 1
