"""`run.py sweep` end to end on a tiny config: real ZenML runs, a real MLflow store and registry,
the study in SQLite (and, where a server runs on 127.0.0.1:5432, PostgreSQL).

A sweep is run with --trials 2 and then the same command with --trials 3: the second continues
the stored study with exactly one new trial. Checked afterwards through Optuna, MLflow and the
command's output: child runs under one parent, the data steps served from the cache for later
trials, only the final run of the best values registering.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA_STEPS = {"load_dataset", "format_records", "tokenize_dataset"}


def _project(tmp_path: Path) -> tuple[Path, Path]:
    config = tmp_path / "tiny.yaml"
    config.write_text(
        textwrap.dedent(
            f"""\
            name: sweeptiny
            model:
              from_config: {{model_type: llama, hidden_size: 32, intermediate_size: 64, num_hidden_layers: 2,
                            num_attention_heads: 4, num_key_value_heads: 2, max_position_embeddings: 256}}
              tokenizer: {ROOT / "assets" / "tiny-tokenizer"}
            data: {{path: {ROOT / "data" / "lorekeep.jsonl"}, validation_split: 0.1, seed: 42}}
            template: {{name: chatml}}
            tokenize: {{max_length: 128}}
            train: {{method: full, learning_rate: 1.0e-3, max_steps: 4, batch_size: 8, eval_steps: 2,
                    save_steps: 4, logging_steps: 1}}
            eval: {{max_samples: 4, max_new_tokens: 8, batch_size: 4}}
            registry: {{model_name: sweeptiny, metric: rougeL}}
            """
        )
    )
    sweep = tmp_path / "tiny-lr.yaml"
    sweep.write_text(
        textwrap.dedent(
            """\
            objective: {metric: eval_loss}
            trials: 3
            seed: 0
            pruner: {type: none}
            params:
              train.learning_rate: {low: 1.0e-4, high: 1.0e-2, log: true}
              train.batch_size: {choices: [4, 8]}
            """
        )
    )
    return config, sweep


def _sweep(home: Path, config: Path, sweep: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TUNELINE_HOME": str(home), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    r = subprocess.run(
        [sys.executable, "run.py", "sweep", "--config", str(config), "--sweep", str(sweep), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-6000:]
    return r


def _new_trials(out: str) -> int:
    return int(re.search(r"new trials this run: (\d+)", out).group(1))


@pytest.mark.slow
def test_sweep_runs_trials_as_child_runs_resumes_and_registers_only_the_best(tmp_path):
    import optuna
    from mlflow import MlflowClient

    config, sweep = _project(tmp_path)
    home = tmp_path / "home"
    first = _sweep(home, config, sweep, "--trials", "2")
    assert _new_trials(first.stdout) == 2
    second = _sweep(home, config, sweep, "--trials", "3")
    assert _new_trials(second.stdout) == 1  # resumed: only the missing trial ran

    study = optuna.load_study(study_name="tiny-lr", storage=f"sqlite:///{home / 'sweeps.db'}")
    trials = study.trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    for t in trials[1:]:  # later trials are served the data steps from ZenML's cache
        assert DATA_STEPS <= set(t.user_attrs["tuneline.cached_steps"]), t.user_attrs
    assert "train_model" not in trials[0].user_attrs["tuneline.cached_steps"]

    best = study.best_trial
    out = second.stdout
    assert f"best trial {best.number}: eval_loss {best.value:.6g}" in out
    assert "registration: registered models:/sweeptiny/" in out
    # the final run was served the best trial's training and evaluation, and only registered
    final = re.search(r"Run tuneline_sft-\S+: completed\n  cached steps \(inputs unchanged\): (.*)\n", out)
    assert final and {"train_model", "evaluate_model"} <= set(final.group(1).split(", ")), out[-3000:]

    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tuneline_sft")
    parents = client.search_runs([exp.experiment_id], "tags.`tuneline.run_type` = 'sweep'")
    assert len(parents) == 1
    parent = parents[0]
    children = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(int(c.data.params["trial_number"]) for c in children) == [0, 1, 2]
    for c in children:
        t = trials[int(c.data.params["trial_number"])]
        assert c.data.tags["tuneline.run_type"] == "sweep_trial"
        assert c.data.tags["tuneline.sweep.state"] == "complete"
        assert float(c.data.params["train.learning_rate"]) == pytest.approx(t.params["train.learning_rate"])
        assert c.data.metrics["objective"] == pytest.approx(t.value)
    assert parent.data.tags["best.trial"] == str(best.number)
    assert parent.data.metrics["best_eval_loss"] == pytest.approx(best.value)
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "sweep")}
    assert artifacts == {"sweep/summary.json", "sweep/parallel_coordinates.png"}

    # trials never register: every version comes from a final run of the best values
    versions = client.search_model_versions("name = 'sweeptiny'")
    assert versions
    for v in versions:
        tags = client.get_run(v.run_id).data.tags
        assert tags["tuneline.run_type"] == "training" and "mlflow.parentRunId" not in tags
    newest = max(versions, key=lambda v: int(v.version))
    assert client.get_run(newest.run_id).data.tags["tuneline.sweep.trial"] == str(best.number)


def _postgres_admin():
    psycopg2 = pytest.importorskip("psycopg2")
    try:
        conn = psycopg2.connect(
            host="127.0.0.1", port=5432, user="postgres", dbname="postgres", connect_timeout=3
        )
    except psycopg2.OperationalError as e:
        pytest.skip(f"no PostgreSQL at 127.0.0.1:5432: {e}")
    conn.autocommit = True
    return conn


@pytest.mark.slow
def test_a_study_in_postgresql_resumes(tmp_path):
    import optuna

    admin = _postgres_admin()
    db = f"tuneline_sweep_{uuid.uuid4().hex[:12]}"
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{db}"')
    url = f"postgresql://postgres@127.0.0.1:5432/{db}"
    try:
        config, sweep = _project(tmp_path)
        home = tmp_path / "home"
        assert _new_trials(_sweep(home, config, sweep, "--trials", "1", "--storage", url).stdout) == 1
        assert _new_trials(_sweep(home, config, sweep, "--trials", "2", "--storage", url).stdout) == 1
        study = optuna.load_study(study_name="tiny-lr", storage=url)
        assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
        assert not (home / "sweeps.db").exists()
        optuna.storages.RDBStorage(url).engine.dispose()
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        admin.close()
