"""Registering and promoting against a real MLflow store (SQLite; a server URI in the slow tier),
through `tuneline.registry`, the path the register step takes."""

from __future__ import annotations

import math

import mlflow
import pytest
from mlflow import MlflowClient

from tuneline.registry import (
    Candidate,
    PromotionPolicy,
    Scored,
    decide,
    eval_fingerprint,
    register_and_decide,
    weights_sha256,
)

FP = eval_fingerprint("data", max_samples=4)
ROUGE = PromotionPolicy(metric="rouge_l")


@pytest.fixture
def client(mlflow_db):
    uri = f"sqlite:///{mlflow_db}"
    mlflow.set_tracking_uri(uri)
    yield MlflowClient(tracking_uri=uri, registry_uri=uri)
    mlflow.set_tracking_uri("")


def _register(client, tmp_path, score: float, name="m", base: float | None = 0.1):
    exp = client.get_experiment_by_name("e") or client.get_experiment(
        client.create_experiment("e", artifact_location=str(tmp_path / "art"))
    )
    run = client.create_run(exp.experiment_id)
    model = tmp_path / f"model-{score}"
    model.mkdir()
    (model / "adapter_model.safetensors").write_text(str(score))
    client.log_artifacts(run.info.run_id, str(model), "model")
    client.set_terminated(run.info.run_id)
    cand = Candidate(
        source=f"{run.info.artifact_uri}/model",
        run_id=run.info.run_id,
        weights_sha256=weights_sha256(model),
        scores=Scored({"rouge_l": score}, FP),
        base=None if base is None else Scored({"rouge_l": base}, FP),
    )
    return register_and_decide(client, name, cand, ROUGE, registry_uri=client._registry_uri)


def test_promotion_rules():
    def won(candidate, reference, policy=ROUGE):
        ref = None if reference is None else Scored({policy.metric: reference}, FP, "1")
        return decide(Scored({policy.metric: candidate}, FP), ref, policy).promoted

    assert won(0.6, 0.5) and not won(0.5, 0.5)
    assert won(1.0, 2.0, PromotionPolicy(metric="eval_loss", greater_is_better=False))
    assert not won(math.nan, 0.1) and not won(0.5, math.nan)
    assert not won(0.5, None), "nothing to beat proves no improvement"
    assert not won(0.54, 0.5, PromotionPolicy(metric="rouge_l", min_margin=0.05))
    assert won(0.56, 0.5, PromotionPolicy(metric="rouge_l", min_margin=0.05))


def test_versions_and_champion_alias(client, tmp_path):
    v1 = _register(client, tmp_path, 0.4)
    assert v1.promoted and v1.champion == v1.version == "1"
    v2 = _register(client, tmp_path, 0.3)
    assert not v2.promoted and v2.decision.outcome == "challenger" and v2.version == "2"
    assert str(client.get_model_version_by_alias("m", "champion").version) == v1.version
    assert str(client.get_model_version_by_alias("m", "challenger").version) == v2.version
    assert client.get_model_version("m", "2").tags["decision.reference"] == "v1"
