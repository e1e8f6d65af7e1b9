"""`run.py evaluate`: a registered version or a local model directory scored on a config's data,
tracked in MLflow as an evaluation, registering nothing; and the ZenML Model that mirrors the
registry (versions named by MLflow version, `production` following `@champion`).

The default tier checks the wiring, the reference handling and one real evaluation of a local
directory; the registered-version path and the promote/rollback mirror share one tiny training
run in the slow tier.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests._zenml import zenml_versions

ROOT = Path(__file__).resolve().parent.parent
FINGERPRINTS = {"data": "d", "local_files": "l"}
# Evaluation settings small enough for the default tier: a few samples, short answers.
QUICK_EVAL = [
    "--set",
    "eval.max_samples=4",
    "--set",
    "eval.max_new_tokens=4",
    "--set",
    "eval.bootstrap_resamples=50",
]
TINY_ARCH = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
}


def run_cli(home: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "TUNELINE_HOME": str(home), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("ZENML_CONFIG_PATH", None)
    return subprocess.run(
        [sys.executable, "run.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def mlflow_client(home: Path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{home / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def evaluation_runs(client) -> list:
    return [
        run
        for e in client.search_experiments()
        for run in client.search_runs([e.experiment_id], "tags.`tuneline.run_type` = 'evaluation'")
    ]


def registry_snapshot(client) -> dict:
    """Everything an evaluation must not touch: versions, their tags and sources, aliases, model tags."""
    out = {}
    for rm in client.search_registered_models():
        versions = client.search_model_versions(f"name='{rm.name}'")
        out[rm.name] = {
            "aliases": dict(rm.aliases),
            "tags": dict(rm.tags),
            "versions": {v.version: (v.source, v.run_id, dict(v.tags)) for v in versions},
        }
    return out


def make_model_dir(path: Path, *, template: str = "chatml", record_base: bool = True) -> Path:
    """A real tiny model directory as training leaves one: weights, the prepared tokenizer with
    its chat template, and the start model recorded in tuneline_train.json."""
    from tuneline.config import load_config
    from tuneline.tokenize import prepare_tokenizer
    from tuneline.train.loading import load_model, load_tokenizer

    cfg = load_config("configs/sft.yaml", [f"template.name={template}"])
    tok = prepare_tokenizer(load_tokenizer(cfg.model, cfg.base_dir), cfg.template, cfg.base_dir)
    base = cfg.model.model_copy(update={"from_config": {**cfg.model.from_config, **TINY_ARCH}})
    path.mkdir(parents=True)
    load_model(base, cfg.base_dir, vocab_size=len(tok)).save_pretrained(path)
    tok.save_pretrained(path)
    if record_base:
        summary = {"method": "full", "base_model": base.model_dump(mode="json"), "start_adapter": None}
        (path / "tuneline_train.json").write_text(json.dumps(summary))
    return path


# ------------------------------------------------------------------------ default tier: wiring


def test_evaluation_pipeline_wiring_and_run_tags():
    """The evaluation pipeline scores with training's evaluation steps and registers nothing; its
    MLflow run lands in the config's experiment, tagged with the pinned reference."""
    from pipelines.evaluate import evaluate_pipeline
    from pipelines.runner import _step_options, pipeline_steps
    from tuneline.config import EvalStage, PipelineConfig, load_config
    from tuneline.evaluate.standalone import MODEL_REF_TAG, RUN_TYPE_TAG

    expected = {
        "configs/sft.yaml": [
            "load_dataset",
            "format_records",
            "tokenize_dataset",
            "resolve_model",
            "evaluate_model",
        ],
        "configs/dpo.yaml": ["load_dataset", "resolve_model", "evaluate_preferences"],
    }
    for path, names in expected.items():
        cfg = load_config(path)
        steps = pipeline_steps(
            evaluate_pipeline,
            PipelineConfig.of(cfg),
            FINGERPRINTS,
            eval_config=EvalStage.of(cfg),
            model_reference="models:/m/3",
            model_fingerprint="abc",
        )
        assert list(steps) == names
    tags = {RUN_TYPE_TAG: "evaluation", MODEL_REF_TAG: "models:/m/3"}
    opts = _step_options(cfg, "tracker", steps, experiment_name="tuneline_preference", run_tags=tags)
    for name in ("load_dataset", "resolve_model", "evaluate_preferences"):
        assert opts[name]["settings"]["experiment_tracker"] == {
            "experiment_name": "tuneline_preference",
            "tags": tags,
        }


def test_training_runs_carry_a_zenml_model_named_after_the_registry():
    from pipelines.zenml_model import zenml_model
    from tuneline.config import load_config

    model = zenml_model(load_config("configs/sft.yaml"), "tuneline_sft-run-1")
    # Named by run, so numeric version names stay free for MLflow version numbers.
    assert model.name == "lorekeep-tiny" and model.version == "tuneline_sft-run-1"
    assert model.save_models_to_registry is False  # register_model is the only registry writer
    assert zenml_model(load_config("configs/sft.yaml", ["registry.enabled=false"]), "r") is None


# ------------------------------------------------------------------ default tier: references


def test_start_model_is_the_recorded_one_else_the_configs(tmp_path):
    from tuneline.config import load_config
    from tuneline.evaluate.standalone import EvaluationTarget, evaluation_config, recorded_start

    cfg = load_config("configs/sft.yaml", ["model.trust_remote_code=true"])
    d = tmp_path / "m"
    d.mkdir()
    start, adapter, note = recorded_start(cfg, str(d))
    assert start is None and "config's model.*" in note and "records no start model" in note

    base = cfg.model.model_copy(update={"from_config": {**cfg.model.from_config, **TINY_ARCH}})
    recorded = {**base.model_dump(mode="json"), "trust_remote_code": False}
    (d / "tuneline_train.json").write_text(json.dumps({"base_model": recorded, "start_adapter": None}))
    start, adapter, note = recorded_start(cfg, str(d))
    assert start == recorded and adapter is None and "tuneline_train.json" in note
    target = EvaluationTarget("ref", "ref", str(d), "fp", start, adapter, note)
    evaluated = evaluation_config(cfg, target)
    assert evaluated.model.from_config["hidden_size"] == 32
    # Running code from a model directory stays this config's decision, never the recorded one.
    assert evaluated.model.trust_remote_code is True
    assert evaluated.data == cfg.data and evaluated.eval == cfg.eval

    gone = {**recorded, "from_config": None, "name_or_path": str(tmp_path / "deleted")}
    (d / "tuneline_train.json").write_text(json.dumps({"base_model": gone}))
    start, _, note = recorded_start(cfg, str(d))
    assert start is None and "deleted is not here" in note

    # A recorded start adapter can only be expressed by a preference config.
    adapter_dir = tmp_path / "sft-adapter"
    adapter_dir.mkdir()
    (d / "tuneline_train.json").write_text(
        json.dumps({"base_model": recorded, "start_adapter": str(adapter_dir)})
    )
    assert recorded_start(cfg, str(d))[0] is None
    dpo = load_config("configs/dpo.yaml")
    start, adapter, _ = recorded_start(dpo, str(d))
    assert adapter == str(adapter_dir)
    evaluated = evaluation_config(dpo, EvaluationTarget("r", "r", str(d), "f", start, adapter, ""))
    assert evaluated.train.preference.reference_model == str(adapter_dir)


def _main(capsys, *args: str) -> tuple[int, str]:
    import run

    code = run.main(list(args))
    return code, capsys.readouterr().err


def test_bad_references_exit_2_with_one_line_and_create_nothing(tuneline_home, tmp_path, capsys):
    code, err = _main(capsys, "evaluate", "--config", "configs/sft.yaml", "--model", "models:/nope@champion")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "--model models:/nope@champion: no MLflow store at" in err
    assert not (tuneline_home / "mlflow.db").exists() and not (tuneline_home / "zenml").exists()

    code, err = _main(
        capsys, "evaluate", "--config", "configs/sft.yaml", "--model", str(tmp_path / "missing")
    )
    assert code == 2 and len(err.strip().splitlines()) == 1 and "no such directory" in err

    empty = tmp_path / "empty"
    empty.mkdir()
    code, err = _main(capsys, "evaluate", "--config", "configs/sft.yaml", "--model", str(empty))
    assert code == 2 and "holds no model" in err
    assert not (tuneline_home / "zenml").exists()


def test_a_model_with_another_chat_template_is_refused(tmp_path):
    """Its eval loss would be scored on ids it was never trained with."""
    from tuneline.config import load_config
    from tuneline.errors import UserError
    from tuneline.evaluate.standalone import prepare_evaluation

    d = tmp_path / "zephyr-model"
    d.mkdir()
    from tuneline.tokenize import prepare_tokenizer
    from tuneline.train.loading import load_tokenizer

    cfg = load_config("configs/sft.yaml", ["template.name=zephyr"])
    prepare_tokenizer(load_tokenizer(cfg.model, cfg.base_dir), cfg.template, cfg.base_dir).save_pretrained(d)
    (d / "config.json").write_text("{}")
    with pytest.raises(UserError, match="evaluate it with the config it was trained with") as e:
        prepare_evaluation(
            load_config("configs/sft.yaml"), str(d), tracking_uri="unused", cache_root=str(tmp_path)
        )
    assert e.value.exit_code == 2


# --------------------------------------------------------------- default tier: one real run


def test_evaluate_a_local_model_directory(tmp_path):
    """One real evaluation pipeline: the report where training's evaluation puts it, an MLflow
    run tagged as an evaluation of the directory, and nothing registered."""
    model = make_model_dir(tmp_path / "model")
    home = tmp_path / "home"
    r = run_cli(home, "evaluate", "--config", "configs/sft.yaml", "--model", str(model), *QUICK_EVAL)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-6000:]
    out = r.stdout
    assert "executed steps: load_dataset" in out and "resolve_model" in out and "evaluate_model" in out
    assert f"evaluated {model}: nothing registered" in out
    assert "base compared against: the start model recorded in tuneline_train.json" in out
    assert "delta 95% CI" in out and "eval_loss" in out

    client = mlflow_client(home)
    [run] = evaluation_runs(client)
    assert client.get_experiment(run.info.experiment_id).name == "tuneline_sft"  # the config's experiment
    assert run.data.tags["tuneline.model_ref"] == str(model)
    assert run.data.tags["tuneline.model_fingerprint"]
    assert {"eval/report.html", "eval/samples.json"} <= {
        a.path for a in client.list_artifacts(run.info.run_id, "eval")
    }
    assert "finetuned_eval_loss" in run.data.metrics
    assert "model" not in {a.path for a in client.list_artifacts(run.info.run_id)}  # no model logged
    assert client.search_registered_models() == []
    assert not (model / "tuneline_model.json").exists(), "the user's directory was written to"


# ------------------------------------------------------------ slow tier: one registered model

TRAIN = [
    "--config",
    "configs/sft.yaml",
    "--set",
    "train.max_steps=6",
    "--set",
    "train.eval_steps=3",
    "--set",
    "train.save_steps=3",
    "--set",
    "train.logging_steps=3",
    # Random init at lr 2e-3: six steps cut the held-out loss by far more than any rounding moves it.
    "--set",
    "registry.metric=eval_loss",
    "--set",
    "registry.model_name=h1-model",
    *QUICK_EVAL,
]
EVAL_REGISTERED = [
    "evaluate",
    "--config",
    "configs/sft.yaml",
    "--model",
    "models:/h1-model@champion",
    "--set",
    "registry.metric=eval_loss",
    "--set",
    "registry.model_name=h1-model",
    *QUICK_EVAL,
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """One tiny training run that registers h1-model v1 as champion."""
    home = tmp_path_factory.mktemp("h1") / "home"
    r = run_cli(home, *TRAIN)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-6000:]
    assert "registered models:/h1-model/1: promoted to @champion" in r.stdout
    return home


@pytest.mark.slow
def test_the_training_run_is_mirrored_as_a_zenml_model_version(trained):
    [v] = zenml_versions(trained, "h1-model")
    assert v["name"] == "1" and v["stage"] == "production"
    assert v["meta"]["mlflow_version"] == "1" and v["meta"]["model_uri"] == "models:/h1-model/1"
    assert v["meta"]["decision"] == "champion" and v["meta"]["promoted"] is True
    assert v["meta"]["mlflow_run_id"] == mlflow_client(trained).get_model_version("h1-model", "1").run_id
    assert {"model", "dataset", "tokenized_dataset", "eval_report", "registration"} <= set(v["artifacts"])


@pytest.mark.slow
def test_evaluate_a_registered_version_changes_nothing_in_the_registry(trained):
    client = mlflow_client(trained)
    before = registry_snapshot(client)
    zenml_before = zenml_versions(trained, "h1-model")
    r = run_cli(trained, *EVAL_REGISTERED)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-6000:]
    assert "evaluated models:/h1-model/1 (models:/h1-model@champion): nothing registered" in r.stdout
    assert "delta 95% CI" in r.stdout
    [run] = evaluation_runs(client)
    assert (
        run.data.tags["tuneline.model_ref"] == "models:/h1-model/1"
    )  # pinned: says which version was scored
    assert {"eval/report.html", "eval/samples.json"} <= {
        a.path for a in client.list_artifacts(run.info.run_id, "eval")
    }
    assert registry_snapshot(client) == before
    assert zenml_versions(trained, "h1-model") == zenml_before


@pytest.mark.slow
def test_production_follows_the_champion_through_promote_and_rollback(trained):
    client = mlflow_client(trained)
    v1 = client.get_model_version("h1-model", "1")
    # v2: the same files registered by hand in MLflow only, so ZenML has no version mirroring it.
    client.create_model_version("h1-model", v1.source, run_id=v1.run_id)
    r = run_cli(trained, "promote", "h1-model", "2", "--reason", "test")
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().splitlines()[-1] == (
        "ZenML: no ZenML version of 'h1-model' mirrors MLflow v2; nothing in production (archived 1)"
    )
    assert [v["stage"] for v in zenml_versions(trained, "h1-model")] == ["archived"]

    # The alias moved: the same evaluation command now scores v2 (the pinned reference changed).
    r = run_cli(trained, *EVAL_REGISTERED)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-6000:]
    executed = next(line for line in r.stdout.splitlines() if "executed steps" in line)
    assert "resolve_model" in executed and "evaluate_model" in executed
    assert "evaluated models:/h1-model/2 (models:/h1-model@champion)" in r.stdout

    r = run_cli(trained, "rollback", "h1-model", "--reason", "test")
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().splitlines()[-1] == "ZenML: 'h1-model' version 1 (MLflow v1) is in production"
    assert [v["stage"] for v in zenml_versions(trained, "h1-model")] == ["production"]

    # A registered model that never ran through a pipeline here: one line, no traceback.
    client.create_registered_model("elsewhere")
    client.create_model_version("elsewhere", v1.source, run_id=v1.run_id)
    r = run_cli(trained, "promote", "elsewhere", "1", "--reason", "test")
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().splitlines()[-1] == (
        "ZenML: no model 'elsewhere' in this ZenML store; its production stage is not mirrored"
    )
    assert "Traceback" not in r.stderr
