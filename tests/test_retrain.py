"""`retrain.when: data_changed`: a run on the data the champion was trained on skips training,
evaluation and registration; changed data trains.

Default tier: the config, the decision against a real MLflow registry (SQLite), the live data
fingerprint and the pipeline wiring. Slow tier: three real runs of the tiny pipeline on the
local orchestrator (train, the same data again with --no-cache: skipped, an edited file: trains).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tuneline.config import load_config
from tuneline.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def test_when_defaults_to_always_by_hand_and_data_changed_on_a_schedule():
    cfg = load_config("configs/sft.yaml")
    assert cfg.retrain.when is None
    assert cfg.retrain.resolved(scheduled=False) == "always"
    assert cfg.retrain.resolved(scheduled=True) == "data_changed"
    pinned = load_config("configs/sft.yaml", ["retrain.when=always"])
    assert pinned.retrain.resolved(scheduled=True) == "always"


def test_a_bad_retrain_key_or_value_names_it():
    with pytest.raises(ConfigError) as e:
        load_config("configs/sft.yaml", ["retrain.when=weekly"])
    assert "retrain.when" in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_config("configs/sft.yaml", ["retrain.whn=always"])
    assert "did you mean 'when'" in str(e.value)


def _register(client, name: str, fingerprints: dict[str, str], *, alias: str | None = "champion") -> str:
    from tuneline.registry.register import ensure_registered_model

    ensure_registered_model(client, name)
    tags = {f"data.fingerprint.{k}": v for k, v in fingerprints.items()}
    mv = client.create_model_version(name, source="file:///nowhere", tags=tags)
    if alias:
        client.set_registered_model_alias(name, alias, mv.version)
    return str(mv.version)


def test_the_decision_against_the_champion_in_a_real_registry(mlflow_db):
    from mlflow import MlflowClient

    from tuneline.retrain import decide

    uri = f"sqlite:///{mlflow_db}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    data = {"train": "aaa", "validation": "bbb"}

    first = decide(client, "m", "champion", data)
    assert first.train and "no version of 'm' holds @champion" in first.reason

    _register(client, "m", data)
    same = decide(client, "m", "champion", dict(data))
    assert not same.train and same.champion_version == "1"
    assert same.summary_line().startswith("skipped: data unchanged since champion v1")

    edited = decide(client, "m", "champion", {"train": "aaa", "validation": "ccc"})
    assert (
        edited.train
        and "validation bbb -> ccc" in edited.reason
        and "train" not in edited.reason.split("(")[1]
    )
    grown = decide(client, "m", "champion", {**data, "test": "ddd"})
    assert grown.train and "test - -> ddd" in grown.reason

    # A newer version that is not champion changes nothing: the champion is the reference.
    _register(client, "m", {"train": "zzz", "validation": "bbb"}, alias=None)
    assert not decide(client, "m", "champion", data).train
    # Another alias (registry.alias) is looked up by its own name.
    assert decide(client, "m", "production", data).train


def test_a_champion_without_fingerprints_trains(mlflow_db):
    from mlflow import MlflowClient

    from tuneline.retrain import decide

    uri = f"sqlite:///{mlflow_db}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    _register(client, "old", {})
    d = decide(client, "old", "champion", {"train": "aaa"})
    assert d.train and "no data fingerprint recorded" in d.reason


def test_the_live_fingerprint_follows_file_content_and_unpinned_hub_offline(tmp_path, monkeypatch):
    from tuneline.config import DataConfig
    from tuneline.data import source_fingerprint
    from tuneline.retrain import live_data_fingerprint, resolved_hub_revisions

    f = tmp_path / "d.jsonl"
    f.write_text(json.dumps({"messages": [{"role": "user", "content": "q"}]}) + "\n")
    data = DataConfig.model_validate({"path": str(f)})
    before = live_data_fingerprint(data, str(tmp_path))
    assert before == source_fingerprint(data, str(tmp_path))
    os.utime(f)  # touched, same bytes: same data
    assert live_data_fingerprint(data, str(tmp_path)) == before
    f.write_text(f.read_text() + json.dumps({"messages": [{"role": "user", "content": "r"}]}) + "\n")
    assert live_data_fingerprint(data, str(tmp_path)) != before

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub = DataConfig.model_validate({"sources": [{"hub": "org/some-dataset"}]})
    assert resolved_hub_revisions(hub, str(tmp_path)) == {}  # offline: the config alone
    assert live_data_fingerprint(hub, str(tmp_path)) == source_fingerprint(hub, str(tmp_path))


def test_data_changed_runs_the_gated_pipeline_with_the_same_steps_after_a_decision():
    from pipelines.runner import _step_options, pipeline_for, pipeline_steps
    from tuneline.config import PipelineConfig

    fps = {"data": "d", "local_files": "l"}
    plain = load_config("configs/sft.yaml")
    assert pipeline_for(plain).name == "tuneline_sft"
    assert pipeline_for(plain, scheduled=True).name == "tuneline_sft_retrain"
    cfg = load_config("configs/sft.yaml", ["retrain.when=data_changed", "train.resources.gpu_count=1"])
    pipe = pipeline_for(cfg)
    steps = pipeline_steps(pipe, PipelineConfig.of(cfg), fps)
    assert list(steps) == [
        "fingerprint_data",
        "load_dataset",
        "decide_retrain",
        "format_records",
        "tokenize_dataset",
        "train_model",
        "evaluate_model",
        "register_model",
    ]
    opts = _step_options(cfg, "tracker", steps)
    assert opts["decide_retrain"]["experiment_tracker"] == "tracker"  # the decision is logged
    assert opts["train_model"]["settings"]["resources"].gpu_count == 1
    assert "fingerprint_data" not in opts
    # The gated pipelines repeat their static pipeline's steps: a step added there must be added here.
    for name in ("configs/sft.yaml", "configs/dpo.yaml"):
        static = load_config(name)
        gated = load_config(name, ["retrain.when=data_changed"])
        plain_steps = list(pipeline_steps(pipeline_for(static), PipelineConfig.of(static), fps))
        gated_steps = list(pipeline_steps(pipeline_for(gated), PipelineConfig.of(gated), fps))
        assert gated_steps == ["fingerprint_data", "load_dataset", "decide_retrain", *plain_steps[1:]]


def test_a_skipped_run_says_so_in_the_summary():
    from pipelines.runner import RunSummary, format_summary
    from tuneline.retrain import RetrainDecision, retrain_note

    decision = RetrainDecision(False, "data unchanged since champion v3", {"train": "a"}, "3")
    s = RunSummary(pipeline_run="r", status="completed", notes=[retrain_note(decision.as_dict())])
    out = format_summary(s)
    assert "skipped: data unchanged since champion v3: nothing trained, evaluated or registered" in out
    assert "registered models:/" not in out and "not registered" not in out


# ------------------------------------------------------------ slow tier: real runs


def _project(tmp_path: Path) -> tuple[Path, Path]:
    data = tmp_path / "data.jsonl"
    lines = (ROOT / "data" / "lorekeep.jsonl").read_text().splitlines()
    data.write_text("\n".join(lines[:40]) + "\n")
    config = tmp_path / "retrain.yaml"
    config.write_text(
        json.dumps(
            {
                "model": {
                    "from_config": {
                        "model_type": "llama",
                        "hidden_size": 32,
                        "intermediate_size": 64,
                        "num_hidden_layers": 1,
                        "num_attention_heads": 2,
                        "num_key_value_heads": 1,
                        "max_position_embeddings": 256,
                    },
                    "tokenizer": str(ROOT / "assets" / "tiny-tokenizer"),
                },
                "data": {"path": str(data), "validation_split": 0.2},
                "template": {"name": "chatml"},
                "tokenize": {"max_length": 128},
                "train": {
                    "method": "full",
                    "max_steps": 2,
                    "batch_size": 4,
                    "eval_steps": 2,
                    "save_steps": 2,
                },
                "eval": {"max_samples": 4, "max_new_tokens": 4, "bootstrap_resamples": 50},
                "registry": {"model_name": "retrain-tiny", "metric": "eval_loss"},
                "retrain": {"when": "data_changed"},
            }
        )
    )
    return config, data


def _run(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TUNELINE_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    for key in ("MLFLOW_TRACKING_URI", "ZENML_CONFIG_PATH"):
        env.pop(key, None)
    r = subprocess.run(
        [sys.executable, "run.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    return r


def _registry(home: Path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{home / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    versions = {str(v.version): dict(v.tags) for v in client.search_model_versions("name='retrain-tiny'")}
    aliases = {k: str(v) for k, v in client.get_registered_model("retrain-tiny").aliases.items()}
    return client, versions, aliases


@pytest.mark.slow
def test_same_data_skips_and_an_edited_file_trains(tmp_path):
    config, data = _project(tmp_path)
    home = tmp_path / "home"

    first = _run(home, "--config", str(config))
    assert "registered models:/retrain-tiny/1: promoted to @champion" in first.stdout
    client, versions, aliases = _registry(home)
    assert aliases == {"champion": "1"}

    # The same data, nothing served from the cache: the decision still skips.
    second = _run(home, "--config", str(config), "--no-cache")
    assert "skipped: data unchanged since champion v1" in second.stdout
    assert "executed steps: fingerprint_data, load_dataset, decide_retrain\n" in second.stdout
    assert "train_model" not in second.stdout and "registered models:/" not in second.stdout
    _, versions_after, aliases_after = _registry(home)
    assert versions_after == versions and aliases_after == aliases  # nothing registered, no alias moved
    [skipped] = client.search_runs(
        [e.experiment_id for e in client.search_experiments()], "tags.`tuneline.run_type` = 'skipped'"
    )
    assert skipped.data.tags["tuneline.retrain.champion_version"] == "1"
    assert skipped.data.params["data.fingerprint.train"] == versions["1"]["data.fingerprint.train"]

    lines = data.read_text().splitlines()
    data.write_text(
        "\n".join([*lines, *(ROOT / "data" / "lorekeep.jsonl").read_text().splitlines()[40:44]]) + "\n"
    )
    third = _run(home, "--config", str(config))
    assert "retrain: data changed since champion v1" in third.stdout
    assert "train_model" in third.stdout and "registered models:/retrain-tiny/2" in third.stdout
