"""Registering and promoting against a real MLflow store (SQLite; a server URI in the slow tier)."""

from __future__ import annotations

import mlflow
import pytest
from mlflow import MlflowClient

from tuneline.tracking import champion_score, decide_promotion, register_version


@pytest.fixture
def client(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    yield MlflowClient(tracking_uri=uri, registry_uri=uri)
    mlflow.set_tracking_uri("")


def _version(client, tmp_path, score: float, name="m"):
    exp = client.create_experiment(f"e{score}", artifact_location=str(tmp_path / "art"))
    run = client.create_run(exp)
    (tmp_path / "model").mkdir(exist_ok=True)
    (tmp_path / "model" / "w.txt").write_text(str(score))
    client.log_artifacts(run.info.run_id, str(tmp_path / "model"), "model")
    client.set_terminated(run.info.run_id)
    return register_version(
        client,
        model_name=name,
        source=f"{run.info.artifact_uri}/model",
        run_id=run.info.run_id,
        tags={"metric.rouge_l": f"{score}"},
    )


def test_versions_and_champion_alias(client, tmp_path):
    v1 = _version(client, tmp_path, 0.4)
    assert champion_score(client, "m", "champion", "rouge_l") == (None, None)
    client.set_registered_model_alias("m", "champion", v1.version)
    assert champion_score(client, "m", "champion", "rouge_l") == (0.4, v1.version)
    v2 = _version(client, tmp_path, 0.3)
    champ, ver = champion_score(client, "m", "champion", "rouge_l")
    decision = decide_promotion(0.3, champ, greater_is_better=True, champion_version=ver)
    assert not decision.promoted and ver == v1.version
    assert int(v2.version) == int(v1.version) + 1
    assert client.get_model_version_by_alias("m", "champion").version == v1.version
