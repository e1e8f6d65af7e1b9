"""The CLI contract: exit codes, single clear messages, nothing half-written on bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_cli(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TUNELINE_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run(
        [sys.executable, "run.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


def test_bad_data_exits_2_with_file_line_and_leaves_nothing(tmp_path):
    bad = tmp_path / "bad.jsonl"
    good = json.dumps(
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    )
    bad.write_text(
        good
        + "\n"
        + '{"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}\n'
        + "{not json\n"
    )
    home = tmp_path / "home"
    r = run_cli(home, "--config", "configs/sft.yaml", "--set", f"data.path={bad}")
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    assert "bad.jsonl:2" in r.stderr and "messages[1].role" in r.stderr
    assert "bad.jsonl:3" in r.stderr
    # Validation runs before the pipeline: no MLflow database, no ZenML run, no registered model.
    assert not (home / "mlflow.db").exists()
    assert not (home / "zenml").exists()


def test_bad_config_exits_2_naming_every_key(tmp_path):
    r = run_cli(
        tmp_path / "home",
        "--config",
        "configs/sft.yaml",
        "--set",
        "train.learnig_rate=0.1",
        "--set",
        "train.batch_size=0",
    )
    assert r.returncode == 2
    assert "train.learnig_rate" in r.stderr and "did you mean 'learning_rate'" in r.stderr
    assert "train.batch_size" in r.stderr
    assert "Traceback" not in r.stderr


def test_dry_run_prints_the_plan_and_trains_nothing(tmp_path):
    home = tmp_path / "home"
    r = run_cli(home, "--config", "configs/sft.yaml", "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "train=438" in r.stdout and "validation=42" in r.stdout
    assert "register_model" in r.stdout
    assert not (home / "mlflow.db").exists()


def test_preview_json_is_what_the_trainer_sees(tmp_path):
    r = run_cli(tmp_path / "home", "--config", "configs/sft.yaml", "--preview", "2", "--json")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines() if line.strip()]
    # configs/sft.yaml packs: the two examples arrive as one row whose positions restart per sample.
    assert len(rows) == 1 and rows[0]["position_ids"].count(0) == 2
    for row in rows:
        assert set(row) >= {"text", "input_ids", "labels"}
        assert len(row["input_ids"]) == len(row["labels"])
        assert -100 in row["labels"] and any(t != -100 for t in row["labels"])


def test_preview_works_with_a_tokenizer_only_directory(tmp_path, tiny_tokenizer_dir):
    r = run_cli(
        tmp_path / "home",
        "--config",
        "configs/sft.yaml",
        "--preview",
        "1",
        "--set",
        f"model.tokenizer={tiny_tokenizer_dir}",
    )
    assert r.returncode == 0, r.stderr
    assert "<|im_start|>assistant" in r.stdout


def test_preview_of_preference_pairs_shows_what_trl_receives(tmp_path):
    r = run_cli(tmp_path / "home", "--config", "configs/dpo.yaml", "--preview", "2", "--json")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines() if line.strip()]
    assert len(rows) == 2
    for row in rows:
        assert row["prompt"].endswith("<|im_start|>assistant\n")
        assert row["chosen"] != row["rejected"]
        assert row["chosen"].rstrip().endswith("<|im_end|>") and row["rejected"].rstrip().endswith(
            "<|im_end|>"
        )


BAD = {
    "invalid_json": ('{"messages": [', "bad.jsonl:1"),
    "not_an_object": ("[1, 2]", "bad.jsonl:1"),
    "unknown_role": (
        json.dumps({"messages": [{"role": "wizard", "content": "a"}, {"role": "assistant", "content": "b"}]}),
        "messages[0].role",
    ),
    "empty_answer": (
        json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "  "}]}),
        "messages[1].content",
    ),
    "no_assistant": (json.dumps({"messages": [{"role": "user", "content": "a"}]}), "bad.jsonl:1"),
    "nul_byte": ('{"messages": [{"role": "user", "content": "a\\u0000"}]}\x00', "bad.jsonl:1"),
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_every_bad_kind_exits_2_in_preflight_and_writes_nothing(kind, tmp_path, monkeypatch, capsys):
    """In-process (cheap): run.main returns 2 before any ZenML or MLflow state exists."""
    import run

    text, where = BAD[kind]
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(text.encode() + b"\n")
    home = tmp_path / "home"
    monkeypatch.setenv("TUNELINE_HOME", str(home))
    assert run.main(["--config", str(ROOT / "configs" / "sft.yaml"), "--set", f"data.path={bad}"]) == 2
    err = capsys.readouterr().err
    assert where in err, err
    assert not home.exists() or not any(home.iterdir()), "validation must fail before anything is written"
