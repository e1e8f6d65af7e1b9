"""Server mode: a real `mlflow server` on PostgreSQL or MariaDB, registry used over HTTP.

Each test gets its own database and server (`tests/_servers.py`); skips when the database
server is not reachable.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest

from tests._servers import mlflow_server_on
from tuneline.home import redact_uri
from tuneline.registry import Candidate, PromotionPolicy, Scored, eval_fingerprint, register_and_decide


@pytest.fixture(params=["postgresql", "mariadb"])
def mlflow_server(request, tmp_path):
    with mlflow_server_on(request.param, tmp_path) as (uri, _log):
        yield uri


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
