"""`run.py schedules`: list and delete ZenML schedules on a real (temporary) ZenML store.

The schedules are created through ZenML's own store API, as an orchestrator's submission
records them: one on the local orchestrator, one on a Kubernetes orchestrator component whose
cluster is not reachable from here (no such kube context, or no kubernetes client), so deleting
that one must refuse and change nothing; `--zenml-only` then drops the record once the person
removed the CronJob.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent

_CREATE = """
import sys
from pipelines.stack import configure_environment, ensure_stack
configure_environment()
from tuneline.home import default_mlflow_uri
ensure_stack(default_mlflow_uri())
from zenml.client import Client
from zenml.enums import StackComponentType as T
from zenml.models import PipelineRequest, ScheduleRequest
c = Client()
project = c.active_project.id
store = c.zen_store
pipe = store.create_pipeline(PipelineRequest(name="tuneline_sft", project=project))
other = store.create_pipeline(PipelineRequest(name="tuneline_preference", project=project))
local = c.get_stack_component(T.ORCHESTRATOR, "tuneline-local")
kube = c.create_stack_component(
    name="gke", flavor="kubernetes", component_type=T.ORCHESTRATOR,
    configuration={"kubernetes_context": "gke-ctx", "kubernetes_namespace": "ml"},
)
store.create_schedule(ScheduleRequest(
    name="weekly-sft", active=True, cron_expression="0 3 * * 1",
    orchestrator_id=kube.id, pipeline_id=pipe.id, project=project,
))
s = c.get_schedule("weekly-sft")
c.create_run_metadata(
    metadata={"cron_job_name": "weekly-sft-cj", "timezone": "Europe/Paris"},
    resources=[__import__("zenml.models", fromlist=["_"]).RunMetadataResource(id=s.id, type="schedule")],
)
store.create_schedule(ScheduleRequest(
    name="nightly-dpo", active=False, cron_expression="30 1 * * *",
    orchestrator_id=local.id, pipeline_id=other.id, project=project,
))

# The module's own functions on this store; the CLI wiring is checked from the test.
import json
from pipelines.schedules import delete_schedule, list_schedules
from tuneline.errors import UserError
out = {"dpo_only": [r.name for r in list_schedules(c, {"tuneline_preference", "tuneline_preference_retrain"})]}
try:
    delete_schedule(c, "weekly-sft")
except UserError as e:
    out["refused"] = str(e)
out["kept"] = [r.name for r in list_schedules(c)]
out["zenml_only"] = delete_schedule(c, "weekly-sft", zenml_only=True)
out["after"] = [r.name for r in list_schedules(c)]
store.create_schedule(ScheduleRequest(
    name="hourly-local", active=True, cron_expression="0 * * * *",
    orchestrator_id=local.id, pipeline_id=pipe.id, project=project,
))
out["local"] = delete_schedule(c, "hourly-local")
out["final"] = [r.name for r in list_schedules(c)]
print(json.dumps(out))
"""


def _env(home: Path) -> dict[str, str]:
    env = {**os.environ, "TUNELINE_HOME": str(home)}
    for key in ("MLFLOW_TRACKING_URI", "ZENML_CONFIG_PATH", "ZENML_STORE_URL", "ZENML_STORE_API_KEY"):
        env.pop(key, None)
    return env


def _cli(home: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "run.py", *args],
        cwd=ROOT,
        env=_env(home),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_list_and_delete_schedules_on_a_real_store(tmp_path):
    home = tmp_path / "home"
    script = tmp_path / "create_schedules.py"  # ZenML wants its main module to be a file
    script.write_text(_CREATE)
    r = subprocess.run(
        [sys.executable, str(script)],
        cwd=ROOT,
        env={**_env(home), "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]

    created = json.loads(r.stdout.strip().splitlines()[-1])
    assert created["dpo_only"] == ["nightly-dpo"]
    # The CronJob cannot be reached (no kubernetes client here): refused, the record kept.
    assert "kubectl delete cronjob weekly-sft-cj -n ml" in created["refused"]
    assert "--zenml-only" in created["refused"]
    assert created["kept"] == ["nightly-dpo", "weekly-sft"]
    assert "left as it is" in created["zenml_only"] and created["after"] == ["nightly-dpo"]
    assert "runs no scheduled job" in created["local"] and created["final"] == ["nightly-dpo"]

    r = _cli(home, "schedules")
    assert r.returncode == 0, r.stderr[-3000:]
    nightly = next(line for line in r.stdout.splitlines() if line.startswith("nightly-dpo"))
    assert "tuneline_preference" in nightly and "30 1 * * *" in nightly and " no " in nightly
    assert "tuneline-local (local)" in nightly and "UTC" in nightly

    r = _cli(home, "schedules", "--delete", "nope")
    assert r.returncode == 2
    assert "no such schedule" in r.stderr and "existing: nightly-dpo" in r.stderr


def test_a_listed_schedule_shows_cron_timezone_next_run_and_orchestrator():
    from pipelines.schedules import ScheduleRow, format_schedules

    row = ScheduleRow(
        "weekly-sft",
        "tuneline_sft",
        "0 3 * * 1",
        "Europe/Paris",
        True,
        "2026-12-07 03:00 UTC",
        "gke (kubernetes)",
    )
    out = format_schedules([row], "the ZenML store at https://zenml.example.com")
    header, line = out.splitlines()[1:]
    assert header.split()[:4] == ["name", "pipeline", "cron", "timezone"]
    assert line.split()[:2] == ["weekly-sft", "tuneline_sft"] and "yes" in line and "gke (kubernetes)" in line
    assert format_schedules([], "X") == "no schedules in X"


def _schedule(**kw):
    base = dict(
        active=True,
        cron_expression=None,
        start_time=None,
        end_time=None,
        interval_second=None,
        run_once_start_time=None,
    )
    return SimpleNamespace(**{**base, **kw})


def test_next_run_from_cron_interval_and_once():
    from pipelines.schedules import next_run

    now = datetime(2026, 12, 7, 2, 0)  # a Monday
    assert next_run(_schedule(cron_expression="0 3 * * 1"), now) == "2026-12-07 03:00 UTC"
    assert next_run(_schedule(cron_expression="0 3 * * 1", active=False), now) == "-"
    every_hour = _schedule(start_time=datetime(2026, 12, 6, 0, 30), interval_second=timedelta(hours=1))
    assert next_run(every_hour, now) == "2026-12-07 02:30 UTC"
    assert next_run(_schedule(run_once_start_time=datetime(2026, 12, 1)), now) == "-"
    ended = _schedule(cron_expression="0 3 * * 1", end_time=datetime(2026, 12, 7, 2, 30))
    assert next_run(ended, now) == "-"


def test_pipeline_names_match_the_pipelines():
    from pipelines.runner import PIPELINES, RETRAIN_PIPELINES, load_pipeline
    from pipelines.schedules import PIPELINE_NAMES

    for kind, names in PIPELINE_NAMES.items():
        assert names == (load_pipeline(PIPELINES[kind]).name, load_pipeline(RETRAIN_PIPELINES[kind]).name)
