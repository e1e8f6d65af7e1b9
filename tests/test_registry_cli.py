"""`python run.py models | promote | rollback` against a real SQLite MLflow store in tmp: the
versions are registered by the registry package exactly as the register step does it.

Commands run in this process through `run.main` (the script's own entry); the last test runs
the script itself in a subprocess."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from tuneline.registry import (
    Candidate,
    PromotionPolicy,
    Scored,
    eval_fingerprint,
    register_and_decide,
    weights_sha256,
)

ROOT = Path(__file__).resolve().parent.parent
FP = eval_fingerprint("cli-data", max_samples=8)
POLICY = PromotionPolicy(metric="rougeL")


def _register(client, exp, tmp: Path, weights: bytes, rouge: float, base: float = 0.1):
    d = tmp / f"model-{uuid.uuid4().hex[:8]}"
    d.mkdir()
    (d / "adapter_model.safetensors").write_bytes(weights)
    run = client.create_run(exp)
    client.log_artifacts(run.info.run_id, str(d), "model")
    client.set_terminated(run.info.run_id)
    cand = Candidate(
        source=f"{run.info.artifact_uri}/model",
        run_id=run.info.run_id,
        weights_sha256=weights_sha256(d),
        scores=Scored({"rougeL": rouge}, FP),
        base=Scored({"rougeL": base}, FP),
        lineage={"base_model": "tiny-llama", "method": "lora", "git.commit": "0123456789abcdef"},
    )
    uri = client._registry_uri
    return register_and_decide(client, "cli-model", cand, POLICY, registry_uri=uri)


@pytest.fixture(scope="module")
def registered_store(tmp_path_factory, empty_mlflow_db) -> Path:
    """An mlflow.db holding v1 (champion, 0.5), v2 (challenger, 0.4), v3 (champion, 0.6), registered
    once per module; each test works on a copy of it (`home`)."""
    tmp = tmp_path_factory.mktemp("cli-store")
    db = tmp / "mlflow.db"
    shutil.copyfile(empty_mlflow_db, db)
    uri = f"sqlite:///{db}"
    mlflow.set_tracking_uri(uri)
    try:
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        exp = client.create_experiment("cli", artifact_location=(tmp / "artifacts").as_uri())
        outcomes = [_register(client, exp, tmp, w, s) for w, s in ((b"a", 0.5), (b"b", 0.4), (b"c", 0.6))]
    finally:
        mlflow.set_tracking_uri("")
    assert [r.decision.outcome for r in outcomes] == ["champion", "challenger", "champion"]
    return db


@pytest.fixture
def home(tmp_path, registered_store):
    """A TUNELINE_HOME of this test's own whose mlflow.db holds the three registered versions."""
    home = tmp_path / "home"
    home.mkdir()
    shutil.copyfile(registered_store, home / "mlflow.db")
    return home


def run_py(home: Path, *args: str) -> subprocess.CompletedProcess:
    """`python run.py ARGS` as user alice, in a real subprocess."""
    env = {**os.environ, "TUNELINE_HOME": str(home), "USER": "alice"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run(
        [sys.executable, "run.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def cli(monkeypatch, capsys):
    """run_py in this process, through `run.main` (what the script runs): the same arguments,
    environment, exit code and output, without a fresh interpreter importing MLflow (seconds a
    command). The subprocess test at the end keeps the script itself covered."""
    monkeypatch.syspath_prepend(str(ROOT))
    import run

    monkeypatch.setenv("USER", "alice")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)

    def call(home: Path, *args: str) -> subprocess.CompletedProcess:
        monkeypatch.setenv("TUNELINE_HOME", str(home))
        capsys.readouterr()
        code = run.main(list(args))
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(["run.py", *args], code, out, err)

    return call


def _alias_table(home: Path) -> dict[str, str]:
    uri = f"sqlite:///{home / 'mlflow.db'}"
    rm = MlflowClient(tracking_uri=uri, registry_uri=uri).get_registered_model("cli-model")
    return {a: str(v) for a, v in rm.aliases.items()}


def test_models_promote_rollback_round_trip(home, cli):
    r = cli(home, "models", "cli-model")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("cli-model: 3 versions  @champion v3  @previous-champion v1  @challenger v2")
    rows = [line for line in lines if line.startswith("v") and line[1].isdigit()]
    assert [row.split()[0] for row in rows[:3]] == ["v3", "v2", "v1"], "newest first"
    assert "0.6000" in rows[0] and "champion" in rows[0] and "01234567" in rows[0]
    assert "challenger" in rows[1] and "0.4000 vs v1 0.5000: not better than v1" in rows[1]
    assert "v3: run " in r.stdout and "base tiny-llama  data -" in r.stdout

    r = cli(home, "promote", "cli-model", "2", "--reason", "humans prefer its answers")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "cli-model: v2 is now @champion; v3 is @previous-champion"
    assert _alias_table(home) == {"champion": "2", "previous-champion": "3"}

    r = cli(home, "rollback", "cli-model", "--reason", "v2 regressed in production", "--who", "bob")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().startswith("cli-model: v3 is now @champion (v2 rolled back)")
    assert _alias_table(home)["champion"] == "3"

    r = cli(home, "models", "cli-model", "--history")
    assert r.returncode == 0, r.stderr
    history = r.stdout.split("history (oldest first):")[1]
    assert "promote   v2 (was v3)  by alice: humans prefer its answers" in history
    assert "rollback  v3 (was v2)  by bob: v2 regressed in production" in history
    assert "rolled-back" in next(
        line for line in r.stdout.splitlines() if line.startswith("v2 ") and "rolled" in line
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("models", "no-such-model"), "no registered model 'no-such-model'"),
        (("promote", "cli-model", "9"), "'cli-model' has no version 9 (versions: 3, 2, 1)"),
        (("promote", "cli-model", "two"), "version must be a number like 3 (got 'two')"),
        (("rollback", "no-such-model"), "no registered model 'no-such-model'"),
    ],
)
def test_unknown_model_or_version_exits_2_with_one_line(home, cli, args, message):
    before = _alias_table(home)
    r = cli(home, *args)
    assert r.returncode == 2
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert _alias_table(home) == before


def test_rollback_without_previous_champion_names_the_promote_command(home, cli):
    assert cli(home, "rollback", "cli-model").returncode == 0  # v1 back; nothing older left
    r = cli(home, "rollback", "cli-model")
    assert r.returncode == 2
    assert "python run.py promote cli-model <version> --reason" in r.stderr


def test_config_selects_the_tracking_store_and_alias(home, cli, tmp_path):
    """--config: its tracking URI wins over TUNELINE_HOME, its registry.metric picks the columns."""
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        (ROOT / "configs" / "sft.yaml").read_text()
        + f"\ntracking:\n  mlflow_tracking_uri: sqlite:///{home / 'mlflow.db'}\n"
    )
    r = cli(tmp_path / "elsewhere", "models", "cli-model", "--config", str(cfg))
    assert r.returncode == 0, r.stderr
    header = next(line for line in r.stdout.splitlines() if line.startswith("version"))
    assert header.split()[:4] == ["version", "aliases", "created", "(UTC)"] and "rougeL" in header


# Through the script in a subprocess, as a user runs it: exit status and stderr of a real process.


def test_missing_store_exits_2_without_creating_one(tmp_path):
    r = run_py(tmp_path / "empty-home", "models", "cli-model")
    assert r.returncode == 2 and "no MLflow store at" in r.stderr
    assert not (tmp_path / "empty-home" / "mlflow.db").exists()
