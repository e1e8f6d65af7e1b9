"""Two `run.py` processes started at once on one TUNELINE_HOME (issue #9).

The registry's decision is already tested function by function with racing processes
(`test_registry_ops*.py`); this runs the whole thing as users do: two pipelines with different
learning rates, so their weights and scores differ, sharing ZenML's local SQLite store and one
MLflow store (the embedded SQLite file, or a `mlflow server` on PostgreSQL). Both must finish,
register distinct versions, and leave `@champion` on the better of the two.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests._servers import mlflow_server_on
from tuneline.registry import tags as T

ROOT = Path(__file__).resolve().parent.parent
MODEL = "concurrent"
# Different learning rates: different weights, and eval losses that differ by far more than rounding.
LEARNING_RATES = ("2e-3", "5e-4")
RUN_TIMEOUT_S = 900


def tiny_config(tmp_path: Path) -> Path:
    """configs/sft.yaml's tiny model, a few steps, a small eval; promotion on eval_loss, which
    always differs between the two runs (ROUGE after a few steps is 0 for both)."""
    cfg = yaml.safe_load((ROOT / "configs" / "sft.yaml").read_text())
    cfg["name"] = "concurrent"
    cfg["model"]["tokenizer"] = str(ROOT / cfg["model"]["tokenizer"])
    cfg["data"]["path"] = str(ROOT / cfg["data"]["path"])
    cfg["train"].update(
        max_steps=4, batch_size=8, warmup_ratio=0.0, logging_steps=2, eval_steps=100, save_steps=100
    )
    cfg["eval"].update(max_samples=4, max_new_tokens=4, batch_size=4, bootstrap_resamples=50)
    cfg["registry"].update(model_name=MODEL, metric="eval_loss")
    path = tmp_path / "concurrent.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def run_two_at_once(home: Path, config: Path, env_extra: dict[str, str]) -> list[tuple[int, str]]:
    """Start both runs together; (exit code, stdout + stderr) of each once both have finished."""
    env = {**os.environ, "TUNELINE_HOME": str(home), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.update(env_extra)
    procs = []
    for i, lr in enumerate(LEARNING_RATES):
        log = home.parent / f"run{i}.log"
        cmd = [sys.executable, "run.py", "--config", str(config), "--set", f"train.learning_rate={lr}"]
        procs.append(
            (subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT), log)
        )
    out = []
    try:
        for proc, log in procs:
            proc.wait(timeout=RUN_TIMEOUT_S)
            out.append((proc.returncode, log.read_text()))
    finally:
        for proc, _ in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return out


def assert_consistent_registry(client, results: list[tuple[int, str]]) -> None:
    logs = "\n\n".join(f"--- run {i} (exit {rc})\n{text[-4000:]}" for i, (rc, text) in enumerate(results))
    assert [rc for rc, _ in results] == [0, 0], logs
    for _, text in results:
        assert "database is locked" not in text.lower(), logs
        assert re.search(r"^Run \S+: completed$", text, re.MULTILINE), logs

    # Two distinct versions, one per run, and nothing else.
    named = [re.search(rf"registered models:/{MODEL}/(\d+)", text) for _, text in results]
    assert all(named), logs
    versions = {m.group(1) for m in named}
    assert len(versions) == 2, logs
    assert {str(mv.version) for mv in client.search_model_versions(f"name='{MODEL}'")} == versions

    # @champion on the better recorded score, read back from the versions' tags.
    loss = {
        v: float(client.get_model_version(MODEL, v).tags[f"{T.METRIC_PREFIX}eval_loss"]) for v in versions
    }
    assert len(set(loss.values())) == 2, loss
    better, worse = sorted(versions, key=loss.__getitem__)
    aliases = {a: str(v) for a, v in client.get_registered_model(MODEL).aliases.items()}
    assert aliases.get("champion") == better, (aliases, loss, logs)

    # The other one says why it is not champion: it lost the comparison (@challenger), or it
    # was champion first and the better one displaced it (@previous-champion).
    tags = client.get_model_version(MODEL, worse).tags
    if aliases.get("challenger") == worse:
        assert tags[T.DECISION] == "challenger" and f"v{better}" in tags[T.DECISION_REASON], tags
    else:
        assert tags.get(T.DISPLACED_FOR) == better, (aliases, tags)
        assert aliases.get("previous-champion") == worse or f"v{better}" in tags.get(T.DECISION_NOTE, ""), (
            aliases,
            tags,
        )


@pytest.mark.slow
def test_two_runs_at_once_on_the_embedded_sqlite_store(tmp_path):
    from mlflow import MlflowClient

    home = tmp_path / "home"
    results = run_two_at_once(home, tiny_config(tmp_path), {})
    uri = f"sqlite:///{home / 'mlflow.db'}"
    assert_consistent_registry(MlflowClient(tracking_uri=uri, registry_uri=uri), results)


@pytest.mark.slow
def test_two_runs_at_once_on_a_postgres_backed_server(tmp_path):
    from mlflow import MlflowClient

    home = tmp_path / "home"
    with mlflow_server_on("postgresql", tmp_path / "server", workers=2) as (uri, server_log):
        results = run_two_at_once(home, tiny_config(tmp_path), {"MLFLOW_TRACKING_URI": uri})
        assert not (home / "mlflow.db").exists(), "a server URI must not fall back to the local store"
        assert_consistent_registry(MlflowClient(tracking_uri=uri, registry_uri=uri), results)
        assert "database is locked" not in server_log.read_text().lower()
