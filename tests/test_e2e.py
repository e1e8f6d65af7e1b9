"""The whole SFT pipeline on CPU, checked through the MLflow client afterwards.

Runs `run.py` as a user would (a subprocess with its own TUNELINE_HOME), with the
shipped config shortened by --set so the default tier stays fast.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FAST = [
    "--set",
    "train.max_steps=120",
    "--set",
    "train.eval_steps=60",
    "--set",
    "train.save_steps=60",
    "--set",
    "eval.max_samples=16",
    "--set",
    "registry.model_name=e2e-model",
]


def run_cli(home: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "TUNELINE_HOME": str(home), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run(
        [sys.executable, "run.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def _zenml_run_count(home: Path) -> int:
    code = (
        "from pipelines.stack import configure_environment; configure_environment()\n"
        "from zenml.client import Client; print(Client().list_pipeline_runs(size=1).total)"
    )
    env = {**os.environ, "TUNELINE_HOME": str(home)}
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr[-2000:]
    return int(r.stdout.strip().splitlines()[-1])


@pytest.mark.e2e
def test_sft_pipeline_end_to_end(tmp_path):
    from mlflow import MlflowClient

    home = tmp_path / "home"
    r = run_cli(home, "--config", "configs/sft.yaml", *FAST)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-6000:]
    assert "registered models:/e2e-model/1" in r.stdout and "promoted to @champion" in r.stdout

    uri = f"sqlite:///{home / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    versions = client.search_model_versions("name='e2e-model'")
    assert len(versions) == 1
    mv = versions[0]
    run = client.get_run(mv.run_id)
    m = run.data.metrics
    # The model learned: held-out loss far below the base, answers clearly better.
    assert m["finetuned_eval_loss"] < 0.5 * m["base_eval_loss"]
    assert m["finetuned_rougeL"] > m["base_rougeL"] + 0.2
    # ... by more than noise: the paired bootstrap interval of the gain excludes zero.
    # (interval bounds and significance are params: one-off figures, not one-point charts)
    p = {
        k: float(v) if v not in ("True", "False") else v == "True"
        for k, v in run.data.params.items()
        if k.startswith("stats.eval.")
    }
    assert p["stats.eval.delta_rougeL_ci_low"] > 0 and p["stats.eval.delta_rougeL_significant"] is True
    assert (
        p["stats.eval.finetuned_rougeL_ci_low"]
        <= m["finetuned_rougeL"]
        <= p["stats.eval.finetuned_rougeL_ci_high"]
    )
    evals = {a.path for a in client.list_artifacts(run.info.run_id, "eval")}
    assert {"eval/report.html", "eval/samples.json"} <= evals
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert {"plots/loss.png", "plots/token_lengths.png", "plots/eval_metrics.png"} <= plots
    assert not [k for k in m if k.startswith(("tokenize_", "data_"))], "one-off statistics are params"
    assert "largest wins (rougeL)" in r.stdout and "delta 95% CI" in r.stdout
    assert client.get_metric_history(run.info.run_id, "training/loss"), (
        "per-step training loss was not logged"
    )
    assert "train.learning_rate" in run.data.params
    assert any(k.startswith("data.fingerprint.") for k in run.data.params)
    # Lineage on the version, the champion alias, and the model files as artifacts.
    assert mv.tags["data.fingerprint.train"] == run.data.params["data.fingerprint.train"]
    for key in ("git.commit", "config.sha256", "zenml.run_id", "weights.sha256", "hardware", "pkg.torch"):
        assert mv.tags.get(key), key
    assert mv.tags["mlflow_run_id"] == run.info.run_id and mv.tags["decision"] == "champion"
    assert "tuneline_config.json" in {a.path for a in client.list_artifacts(run.info.run_id)}
    assert client.get_model_version_by_alias("e2e-model", "champion").version == mv.version
    # The model lives in the ZenML artifact store (durable), not only in a worker's temp dir.
    stored = list((home / "artifacts" / "train_model").rglob("model.safetensors"))
    assert stored, "train_model's output was not materialized into the artifact store"
    # The version is an MLflow pyfunc chat model around the trained directory (artifacts/hf_model).
    import mlflow.pyfunc
    from mlflow.artifacts import download_artifacts

    local = Path(download_artifacts(artifact_uri=mv.source, dst_path=str(tmp_path / "v1")))
    assert "python_function" in (local / "MLmodel").read_text()
    hf_files = {p.name for p in (local / "artifacts" / "hf_model").iterdir()}
    assert {"model.safetensors", "tokenizer_config.json", "tuneline_serve.json"} <= hf_files
    question = {"messages": [{"role": "user", "content": "Name the capital city of Velan."}]}
    answer = mlflow.pyfunc.load_model(str(local)).predict(question, params={"max_new_tokens": 16})
    assert len(answer) == 1 and isinstance(answer[0], str)

    # An identical second run is served from the cache and registers nothing new.
    r2 = run_cli(home, "--config", "configs/sft.yaml", *FAST)
    assert r2.returncode == 0, r2.stderr[-4000:]
    assert "cached steps" in r2.stdout and "executed steps" not in r2.stdout
    assert len(client.search_model_versions("name='e2e-model'")) == 1

    # Bad data against a populated registry: exit 2, and no version, alias, MLflow run or ZenML run is added.
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": " "}]}\n'
    )
    runs_before = _zenml_run_count(home)
    mlflow_runs_before = len(client.search_runs([run.info.experiment_id]))
    rb = run_cli(home, "--config", "configs/sft.yaml", *FAST, "--set", f"data.path={bad}")
    assert rb.returncode == 2 and "bad.jsonl:1" in rb.stderr and "messages[1].content" in rb.stderr
    assert len(client.search_model_versions("name='e2e-model'")) == 1
    assert client.get_model_version_by_alias("e2e-model", "champion").version == mv.version
    assert len(client.search_runs([run.info.experiment_id])) == mlflow_runs_before
    assert _zenml_run_count(home) == runs_before

    # Changing only an eval setting re-runs evaluation (and registration), never training.
    r3 = run_cli(home, "--config", "configs/sft.yaml", *FAST, "--set", "eval.max_samples=8")
    assert r3.returncode == 0, r3.stderr[-4000:]
    cached = next(line for line in r3.stdout.splitlines() if "cached steps" in line)
    executed = next(line for line in r3.stdout.splitlines() if "executed steps" in line)
    assert "train_model" in cached and "tokenize_dataset" in cached
    assert "evaluate_model" in executed
    # Same weights: the version is re-evaluated and reused, never registered twice.
    assert "registered models:/e2e-model/1" in r3.stdout and "promoted to @champion" in r3.stdout
    assert len(client.search_model_versions("name='e2e-model'")) == 1
    v1 = client.get_model_version("e2e-model", "1").tags
    assert len({k.split(".")[1] for k in v1 if k.startswith("eval.") and k != "eval.fingerprint"}) == 2

    # The ZenML Model mirrors the registry: the run that registered v1 is ZenML version "1", in
    # production (v1 is @champion); r3 registered the same weights again, so it recorded v1 and
    # kept its run name; a run whose registration was cached records nothing.
    from tests._zenml import zenml_versions

    versions = zenml_versions(home, "e2e-model")
    named = {v["name"]: v for v in versions}
    assert named["1"]["stage"] == "production" and named["1"]["meta"]["mlflow_version"] == "1"
    assert {"model", "eval_report", "registration"} <= set(named["1"]["artifacts"])
    assert [v["name"] for v in versions if v["stage"] == "production"] == ["1"]
    assert versions[-1]["name"].startswith("tuneline_sft-") and versions[-1]["meta"]["mlflow_version"] == "1"
    assert {v["meta"].get("mlflow_version") for v in versions} <= {"1", None}


@pytest.mark.e2e
def test_diverging_run_fails_cleanly_and_registers_nothing(tmp_path):
    from mlflow import MlflowClient

    home = tmp_path / "home"
    r = run_cli(
        home,
        "--config",
        "configs/sft.yaml",
        "--set",
        "train.learning_rate=1e12",
        "--set",
        "train.max_grad_norm=1e30",
        "--set",
        "train.max_steps=30",
        "--set",
        "eval.max_samples=4",
    )
    assert r.returncode == 2, r.stderr[-3000:]
    last = r.stderr.strip().splitlines()
    assert any("step train_model failed" in line and "NonFiniteLossError" in line for line in last)
    assert "training diverged at step" in r.stderr
    uri = f"sqlite:///{home / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    runs = [run for e in client.search_experiments() for run in client.search_runs([e.experiment_id])]
    assert [run.info.status for run in runs] == ["FAILED"]
    losses = [m.value for m in client.get_metric_history(runs[0].info.run_id, "training/loss")]
    assert losses and losses[-1] != losses[-1], "the NaN loss must be logged, not filtered"
    assert client.search_registered_models() == []


@pytest.mark.slow
def test_sft_then_dpo_from_the_registry_champion(tmp_path):
    from mlflow import MlflowClient

    home = tmp_path / "home"
    # The shipped presets as a user runs them: DPO needs an SFT model that already knows the facts.
    r = run_cli(home, "--config", "configs/sft.yaml", "--set", "eval.max_samples=8")
    assert r.returncode == 0, r.stderr[-4000:]
    r = run_cli(home, "--config", "configs/dpo.yaml")
    assert r.returncode == 0, r.stderr[-4000:]
    assert "registered models:/lorekeep-tiny-dpo/1" in r.stdout
    uri = f"sqlite:///{home / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    run = client.get_run(client.get_model_version("lorekeep-tiny-dpo", "1").run_id)
    # The alias was pinned to a version before the run: lineage names the exact SFT model.
    assert run.data.params["train.preference.reference_model"] == "models:/lorekeep-tiny/1"
    m = run.data.metrics
    assert m["finetuned_logprob_margin"] > m["base_logprob_margin"], (
        "DPO must widen the chosen-rejected margin"
    )
    assert m["finetuned_preference_accuracy"] >= m["base_preference_accuracy"]


@pytest.mark.slow
def test_continued_pretraining_end_to_end(tmp_path):
    r = run_cli(tmp_path / "home", "--config", "configs/cpt.yaml", "--set", "train.max_steps=40")
    assert r.returncode == 0, r.stderr[-4000:]
    assert "registered models:/lorekeep-tiny-cpt/1" in r.stdout


@pytest.mark.slow
def test_pipeline_trains_with_two_processes(tmp_path):
    """train.resources.accelerate launches the training core in 2 ranks (gloo on CPU)."""
    r = run_cli(
        tmp_path / "home",
        "--config",
        "configs/sft.yaml",
        *FAST[:2],
        "--set",
        "eval.max_samples=4",
        "--set",
        "train.resources.accelerate=true",
        "--set",
        "train.resources.num_processes=2",
    )
    assert r.returncode == 0, r.stderr[-4000:]
    assert "--nproc_per_node 2" in r.stderr
    assert "registered models:/lorekeep-tiny/1" in r.stdout


@pytest.mark.slow
def test_pipeline_resumes_after_kill_9_during_training(tmp_path):
    """A crash mid-training (kill -9 of the whole run) and the same command again: it resumes."""
    import signal
    import time

    from mlflow import MlflowClient

    home = tmp_path / "home"
    args = [
        "--config",
        "configs/sft.yaml",
        "--set",
        "train.max_steps=300",
        "--set",
        "train.save_steps=50",
        "--set",
        "eval.max_samples=4",
        "--set",
        "registry.model_name=resume-model",
    ]
    env = {**os.environ, "TUNELINE_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.Popen(
        [sys.executable, "run.py", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    # One directory per run identity: <name>--<method>--<digest of config, data, base>.
    ckpt_roots = home / "artifacts" / "checkpoints"
    committed = "lorekeep--full--*/checkpoint-100/manifest.json"
    deadline = time.time() + 400
    try:
        while time.time() < deadline and proc.poll() is None:
            if list(ckpt_roots.glob(committed)):
                break
            time.sleep(0.5)
        assert proc.poll() is None, "the run ended before it could be killed"
        assert list(ckpt_roots.glob(committed)), "no committed checkpoint in time"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    r = run_cli(home, *args)
    assert r.returncode == 0, r.stderr[-4000:]
    uri = f"sqlite:///{home / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    run = client.get_run(client.get_model_version("resume-model", "1").run_id)
    assert run.data.params["stats.train.resumed"] == "True"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "training/loss")]
    assert steps and min(steps) > 100, f"the resumed run re-trained steps it had already done: {steps[:5]}"
    assert run.data.params["stats.train.global_step"] == "300"
    assert not list(ckpt_roots.glob("lorekeep--full--*")), "a finished run's checkpoints are cleaned up"
