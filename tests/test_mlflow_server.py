"""Server mode: a real `mlflow server` on PostgreSQL or MariaDB, registry used over HTTP.

Each test creates its own database (CI shares the machine) and drops it afterwards.
Skips when the database server is not reachable.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid

import pytest

from tuneline.home import redact_uri
from tuneline.registry import Candidate, PromotionPolicy, Scored, eval_fingerprint, register_and_decide


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _postgres_db():
    psycopg2 = pytest.importorskip("psycopg2")
    name = f"tuneline_test_{uuid.uuid4().hex[:10]}"
    try:
        conn = psycopg2.connect(
            host="127.0.0.1", port=5432, user="postgres", dbname="postgres", connect_timeout=3
        )
    except psycopg2.OperationalError as e:
        pytest.skip(f"PostgreSQL not reachable: {e}")
    conn.autocommit = True
    conn.cursor().execute(f"CREATE DATABASE {name}")

    def drop():
        conn.cursor().execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.close()

    return f"postgresql://postgres@127.0.0.1:5432/{name}", drop


def _mariadb_db():
    pymysql = pytest.importorskip("pymysql")
    name = f"tuneline_test_{uuid.uuid4().hex[:10]}"
    try:
        conn = pymysql.connect(
            host="127.0.0.1", port=3306, user="root", password="", connect_timeout=3, autocommit=True
        )
    except pymysql.err.OperationalError as e:
        pytest.skip(f"MariaDB not reachable: {e}")
    conn.cursor().execute(f"CREATE DATABASE {name}")

    def drop():
        conn.cursor().execute(f"DROP DATABASE IF EXISTS {name}")
        conn.close()

    return f"mysql+pymysql://root@127.0.0.1:3306/{name}", drop


@pytest.fixture(params=["postgresql", "mariadb"])
def mlflow_server(request, tmp_path):
    backend, drop = _postgres_db() if request.param == "postgresql" else _mariadb_db()
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            backend,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--default-artifact-root",
            str(tmp_path / "artifacts"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    import urllib.request

    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"{uri}/health", timeout=2)
            break
        except OSError:
            if proc.poll() is not None:
                pytest.fail(f"mlflow server exited: {proc.stdout.read().decode()[-3000:]}")
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("mlflow server did not become healthy in 90 s")
    yield uri
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    drop()


@pytest.mark.slow
def test_register_and_promote_over_http(mlflow_server, tmp_path):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    exp = client.create_experiment("server-test")
    versions = []
    policy = PromotionPolicy(metric="rouge_l")
    fp = eval_fingerprint("server-data")
    for score in (0.2, 0.5, 0.4):
        run = client.create_run(exp)
        client.log_metric(run.info.run_id, "finetuned_rouge_l", score)
        client.set_terminated(run.info.run_id)
        result = register_and_decide(
            client,
            "srv-model",
            Candidate(
                source=f"runs:/{run.info.run_id}/model",
                run_id=run.info.run_id,
                weights_sha256=f"weights-{score}",
                scores=Scored({"rouge_l": score}, fp),
                base=Scored({"rouge_l": 0.1}, fp),
            ),
            policy,
            registry_uri=mlflow_server,
        )
        assert not result.serialised, "a server has no shared file lock: set-then-verify decides"
        versions.append(result.version)
    assert str(client.get_model_version_by_alias("srv-model", "champion").version) == versions[1]
    assert str(client.get_model_version_by_alias("srv-model", "challenger").version) == versions[2]


def test_redact_uri_hides_credentials():
    assert redact_uri("https://user:pw@mlflow.example:5000/x") == "https://***@mlflow.example:5000/x"
    assert redact_uri("sqlite:////tmp/a.db") == "sqlite:////tmp/a.db"


@pytest.mark.slow
@pytest.mark.parametrize("mlflow_server", ["postgresql"], indirect=True)
def test_pipeline_tracks_to_a_server_and_never_leaks_the_token(mlflow_server, tmp_path):
    """MLFLOW_TRACKING_URI=http://... works end to end; the credential stays out of output and params."""
    from mlflow import MlflowClient

    root = __import__("pathlib").Path(__file__).resolve().parent.parent
    token = f"tok-{uuid.uuid4().hex}"
    home = tmp_path / "home"
    env = {
        **os.environ,
        "TUNELINE_HOME": str(home),
        "HF_HUB_OFFLINE": "1",
        "MLFLOW_TRACKING_URI": mlflow_server,
        "MLFLOW_TRACKING_TOKEN": token,
    }
    r = subprocess.run(
        [
            sys.executable,
            "run.py",
            "--config",
            "configs/sft.yaml",
            "--set",
            "train.max_steps=20",
            "--set",
            "eval.max_samples=4",
            "--set",
            "registry.model_name=server-e2e",
        ],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-4000:]
    assert token not in r.stdout + r.stderr
    assert not (home / "mlflow.db").exists(), "a server URI must not fall back to the local SQLite store"
    client = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    mv = client.get_model_version_by_alias("server-e2e", "champion")
    run = client.get_run(mv.run_id)
    assert run.info.status == "FINISHED"
    assert token not in str(run.data.params) and token not in str(mv.tags)
    # The stack stores only a reference to a ZenML secret, never the value.
    probe = (
        "from pipelines.stack import configure_environment; configure_environment()\n"
        "from zenml.client import Client\n"
        "from zenml.enums import StackComponentType as T\n"
        "print(Client().get_stack_component(T.EXPERIMENT_TRACKER, 'tuneline-mlflow').configuration)\n"
    )
    conf = subprocess.run(
        [sys.executable, "-c", probe], cwd=root, env=env, capture_output=True, text=True, timeout=120
    )
    assert conf.returncode == 0, conf.stderr[-2000:]
    assert "{{tuneline-mlflow-credentials.token}}" in conf.stdout and token not in conf.stdout
