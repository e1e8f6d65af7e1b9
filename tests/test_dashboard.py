"""`run.py dashboard` without a browser: servers stop as whole process groups, errors name their
cause, the MLflow link lands on the runs, ZenML's onboarding survey is answered in the store.
The browser walk through both real dashboards is tests/test_dashboards_browser.py (slow)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tuneline import dashboard
from tuneline.errors import TunelineError

ROOT = Path(__file__).resolve().parent.parent

# A stand-in for `mlflow ui`: a server that forks a worker (which would outlive a plain kill of
# its parent) and answers /health.
FAKE_SERVER = textwrap.dedent(
    """
    import http.server, subprocess, sys
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    print("worker", worker.pid, flush=True)

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200); self.end_headers(); self.wfile.write(b"OK")

    http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Health).serve_forever()
    """
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_server_and_its_workers_stop_as_one_process_group(tmp_path):
    port = free_port()
    svc = dashboard.Service("fake", [sys.executable, "-c", FAKE_SERVER, str(port)], port, url="")
    dashboard.start(svc, tmp_path)
    try:
        dashboard.wait_ready([svc], timeout=60)
        assert dashboard.answers(svc.health_url)
        worker = int(svc.log.read_text().split()[1])
    finally:
        dashboard.stop([svc], grace=5)
    assert svc.proc.returncode is not None
    assert not dashboard._group_alive(svc.proc.pid)
    assert not _running(worker), "the server's worker outlived it"
    assert dashboard.port_free(port)


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's exit is collected by init whenever init gets to it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_server_that_dies_at_start_is_reported_with_its_log(tmp_path):
    port = free_port()
    script = "import sys; print('address already in use', flush=True); sys.exit(3)"
    svc = dashboard.Service("ZenML", [sys.executable, "-c", script], port, url="")
    dashboard.start(svc, tmp_path)
    with pytest.raises(TunelineError) as e:
        dashboard.wait_ready([svc], timeout=60)
    dashboard.stop([svc])
    assert "ZenML dashboard exited with code 3" in str(e.value) and "address already in use" in str(e.value)
    assert str(tmp_path / "dashboard-zenml.log") in str(e.value)


def test_a_busy_port_is_a_user_error_naming_the_option(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {**os.environ, "TUNELINE_HOME": str(tmp_path / "home")}
        env.pop("MLFLOW_TRACKING_URI", None)
        r = subprocess.run(
            [sys.executable, "run.py", "dashboard", "--mlflow-port", str(port), "--no-zenml"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert r.returncode == 2, r.stderr[-2000:]
    assert f"--mlflow-port {port}: port {port} on 127.0.0.1 is in use" in r.stderr


def test_the_mlflow_link_opens_the_newest_runs_experiment_as_model_training(tuneline_home):
    from mlflow import MlflowClient

    from tuneline.home import default_mlflow_uri
    from tuneline.tracking import EXPERIMENT_KIND_TAG, ensure_experiment

    uri = default_mlflow_uri()
    base = "http://127.0.0.1:5000"
    assert dashboard.experiment_url(uri, base) == f"{base}/#/experiments?workflowType=machine_learning"
    artifacts = tuneline_home / "mlflow-artifacts"
    ensure_experiment(uri, "tagged", str(artifacts))
    client = MlflowClient(tracking_uri=uri)
    # An experiment an older version created (under TUNELINE_HOME, without the kind tag) and one
    # somebody else made elsewhere in the same store.
    old = client.create_experiment("old", artifact_location=(artifacts / "old").resolve().as_uri())
    other = client.create_experiment("other", artifact_location=(tuneline_home / "else").as_uri())
    client.create_run(old)
    url = dashboard.experiment_url(uri, base)
    assert url == f"{base}/#/experiments/{old}?workflowType=machine_learning"
    assert client.get_experiment_by_name("tagged").tags[EXPERIMENT_KIND_TAG] == "custom_model_development"
    assert client.get_experiment(old).tags[EXPERIMENT_KIND_TAG] == "custom_model_development"
    assert EXPERIMENT_KIND_TAG not in client.get_experiment(other).tags


def test_the_zenml_store_is_prepared_so_the_dashboard_skips_its_onboarding_survey(tmp_path):
    code = textwrap.dedent(
        """
        from pipelines.stack import configure_environment, prepare_dashboard
        configure_environment()
        prepare_dashboard()
        prepare_dashboard()  # idempotent
        from zenml.client import Client
        u = Client().get_user("default")
        s = Client().get_settings()
        print(u.body.email_opted_in, u.metadata.user_metadata, s.display_updates, s.display_announcements)
        """
    )
    env = {**os.environ, "TUNELINE_HOME": str(tmp_path / "home")}
    env.pop("ZENML_CONFIG_PATH", None)
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr[-3000:]
    # The dashboard (ZenML 0.98) shows the survey while email_opted_in is None or the survey flag is unset.
    assert r.stdout.strip().splitlines()[-1] == "False {'finished_onboarding_survey': True} False False"


def test_the_run_summary_says_how_to_open_the_dashboards(monkeypatch, tmp_path):
    from pipelines.runner import dashboard_command
    from tuneline.home import PROJECT_ROOT

    monkeypatch.chdir(PROJECT_ROOT)
    monkeypatch.delenv("TUNELINE_HOME", raising=False)
    assert dashboard_command().endswith("python run.py dashboard")
    monkeypatch.setenv("TUNELINE_HOME", str(tmp_path))
    assert dashboard_command().startswith(f"TUNELINE_HOME={tmp_path} ")
