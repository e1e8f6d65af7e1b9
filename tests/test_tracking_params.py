"""Secret config keys never reach MLflow; keys that merely mention tokens always do."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient
from mlflow.entities import Param

from tuneline.config import load_config
from tuneline.tracking import safe_params

KEPT = [
    "tokenize.max_length",
    "tokenize.train_on",
    "tokenize.allow_special_tokens_in_text",
    "model.tokenizer",
    "eval.max_new_tokens",
    "template.pad_token",
    "stats.token_count",
    "registry.key",
]
DROPPED = [
    "hf_token",
    "HF_TOKEN",
    "api_key",
    "apiKey",
    "password",
    "auth.token",
    "x.access_token",
    "tracking.mlflow_tracking_token",
    "db.credentials",
    "oauth.client_secret",
    "signing-key",
]


@pytest.mark.parametrize("key", KEPT)
def test_token_words_are_not_secrets(key):
    assert safe_params({key: "v"}) == {key: "v"}


@pytest.mark.parametrize("key", DROPPED)
def test_secret_keys_are_dropped(key):
    assert safe_params({key: "s3cr3t"}) == {}


def test_every_tokenize_and_tokenizer_key_of_a_real_config_reaches_mlflow(tmp_path):
    cfg = load_config("configs/sft.yaml")
    config = cfg.model_dump(mode="json", exclude={"tracking"})
    config["auth"] = {"token": "s3cr3t"}
    config["hf_token"] = "s3cr3t"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("params", artifact_location=str(tmp_path / "art"))
    run = client.create_run(exp)
    client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in safe_params(config).items()])
    logged = client.get_run(run.info.run_id).data.params
    tokenize_keys = {f"tokenize.{k}" for k in cfg.tokenize.model_dump()}
    assert tokenize_keys <= set(logged)
    assert logged["model.tokenizer"] == cfg.model.tokenizer
    assert "s3cr3t" not in logged.values()
