"""`train.backend: openai` against a local server implementing the documented endpoints, driven by
the official `openai` client: conversion, cost, a whole job into MLflow, cancel, resume, the key."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest

from tests._openai_server import BASE_ANSWER, TEST_KEY, openai_server
from tests.conftest import ROOT, fixture_path
from tuneline.config import load_config
from tuneline.data.records import Record
from tuneline.errors import ConfigError, DataError
from tuneline.openai_backend import convert, cost
from tuneline.openai_backend.client import MissingKeyError, make_client, resolve_api_key
from tuneline.openai_backend.jobs import JobFailed, JobSpec, JobState, job_fingerprint, run_job

BASE = "gpt-4.1-mini-2025-04-14"


def rec(*turns: tuple[str, str], line: int = 1) -> Record:
    return Record(
        messages=[{"role": r, "content": c} for r, c in turns], meta={"source": "d.jsonl", "line": line}
    )


def lore_files():
    cfg = load_config(ROOT / "configs" / "openai-sft.yaml")
    from tuneline.data.loader import load_records

    records = load_records(cfg.data, cfg.base_dir, kind="chat")
    return cfg, records, convert.convert_records(records.splits, "all_assistant")


# --- conversion ------------------------------------------------------------------------------


def test_weights_follow_train_on():
    r = rec(("system", "be brief"), ("user", "q1"), ("assistant", "a1"), ("user", "q2"), ("assistant", "a2"))
    weights = {
        mode: [m.get("weight") for m in convert.to_example(r, mode, [])["messages"]]
        for mode in ("all_assistant", "last_assistant")
    }
    assert weights["all_assistant"] == [None, None, 1, None, 1]
    assert weights["last_assistant"] == [None, None, 0, None, 1]


def test_rejects_what_the_api_would_with_file_line():
    records = [rec(("user", "q"), ("assistant", "a"), line=i) for i in range(1, 11)]
    records += [
        rec(("user", "only a question"), line=11),
        rec(("user", "q"), ("assistant", "a"), ("user", "dangling"), line=12),
        rec(("user", "q"), ("assistant", "  "), line=13),
    ]
    with pytest.raises(DataError) as e:
        convert.convert_records({"train": records}, "all_assistant")
    text = str(e.value)
    assert "d.jsonl:11: no assistant turn" in text
    assert "d.jsonl:12: the last turn is not the assistant's" in text
    assert "d.jsonl:13 messages[1]: assistant turn has no text content" in text
    with pytest.raises(DataError, match="at least 10"):
        convert.convert_records({"train": records[:3]}, "all_assistant")


def test_lorekeep_converts_to_chat_jsonl():
    _, records, files = lore_files()
    lines = [json.loads(x) for x in files.train.splitlines()]
    assert len(lines) == len(records.splits["train"]) == files.counts["train"]
    assert files.validation and files.counts["validation"] == len(records.splits["validation"])
    roles = {m["role"] for ex in lines for m in ex["messages"]}
    assert roles <= {"system", "user", "assistant"}
    assert all(m["weight"] == 1 for ex in lines for m in ex["messages"] if m["role"] == "assistant")


# --- config ----------------------------------------------------------------------------------


def _cfg(train: dict, **sections):
    return load_config(
        data={
            "model": {"name_or_path": BASE},
            "data": {"path": "data/lorekeep.jsonl"},
            "train": train,
            **sections,
        }
    )


def test_config_rules():
    cfg = _cfg({"backend": "openai"})
    assert cfg.registry.metric == "rougeL" and cfg.registry.greater_is_better
    # Every key written out (as a pipeline's parameters are) validates the same: defaults are not "set".
    from tuneline.config import PipelineConfig

    PipelineConfig.model_validate(PipelineConfig.of(cfg).model_dump(mode="json"))
    with pytest.raises(ConfigError, match=re.escape("registry.metric: eval_loss is not available")):
        _cfg({"backend": "openai"}, registry={"metric": "eval_loss"})
    with pytest.raises(
        ConfigError, match=r"train.learning_rate \(use train.openai.learning_rate_multiplier\); train.lora"
    ):
        _cfg({"backend": "openai", "learning_rate": 1e-4, "lora": {"r": 8}})
    with pytest.raises(ConfigError, match=re.escape("train.method=dpo cannot run")):
        _cfg({"backend": "openai", "method": "dpo"})
    with pytest.raises(ConfigError, match=re.escape("train.openai is only read with train.backend: openai")):
        _cfg({"openai": {"n_epochs": 2}})
    with pytest.raises(ConfigError, match="must not carry credentials"):
        _cfg({"backend": "openai", "openai": {"base_url": "https://u:p@example.com/v1"}})


# --- cost ------------------------------------------------------------------------------------


def test_cost_estimate_and_budget():
    _, _, files = lore_files()
    est = cost.estimate_cost(files.train, BASE, "auto")
    assert est.epochs == cost.default_epochs(files.counts["train"]) == 3
    assert est.price_per_million == 5.0 and est.billed_tokens == est.train_tokens * 3
    assert est.usd == pytest.approx(est.billed_tokens * 5.0 / 1e6, abs=1e-4)
    assert est.usd_high >= est.usd
    assert cost.price_per_million(f"ft:{BASE}:org::abc") == 5.0
    assert cost.default_epochs(10) == 10 and cost.default_epochs(20_000) == 1
    cost.check_budget(est, 100.0)
    with pytest.raises(ConfigError, match=re.escape("train.openai.max_cost_usd: estimated cost")):
        cost.check_budget(est, 0.01)
    unknown = cost.estimate_cost(files.train, "some-model", 2)
    with pytest.raises(ConfigError, match="price_per_million_tokens"):
        cost.check_budget(unknown, 1.0)


def test_approximate_count_is_within_its_stated_bound():
    """bytes/4 against a real BPE of the cl100k family (Llama 3's vocabulary starts with cl100k's)."""
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe

    ranks = load_tiktoken_bpe(str(fixture_path("tokenizers/llama3-tiktoken/tokenizer.model")))
    pat = (
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
        r"|\s*[\r\n]+|\s+(?!\S)|\s+"
    )
    enc = tiktoken.Encoding("cl100k-family", pat_str=pat, mergeable_ranks=ranks, special_tokens={})
    _, _, files = lore_files()
    exact = cost.count_tokens(files.train, enc)
    approx = cost.count_tokens(files.train, None) if cost._cached_encoding() is None else None
    assert exact.exact and exact.tokens > 0
    if approx is not None:
        assert 0.85 * exact.tokens <= approx.tokens <= 1.25 * exact.tokens
        assert approx.tokens_high >= exact.tokens


# --- jobs against the server -----------------------------------------------------------------


def _spec(**kw) -> JobSpec:
    return JobSpec(model=BASE, suffix="lore", seed=7, **kw)


def test_whole_job_into_mlflow_and_a_registered_pyfunc(
    tmp_path, tuneline_home, mlflow_db, monkeypatch, caplog
):
    import mlflow
    from mlflow import MlflowClient

    from tuneline.openai_backend.evaluate import evaluate_openai
    from tuneline.openai_backend.pyfunc import log_openai_model, model_info

    caplog.set_level("DEBUG")
    cfg, records, files = lore_files()
    cfg = cfg.model_copy(
        update={"eval": cfg.eval.model_copy(update={"max_samples": 8, "bootstrap_resamples": 200})}
    )
    monkeypatch.setenv("OPENAI_API_KEY", TEST_KEY)
    uri = f"sqlite:///{mlflow_db}"
    mlflow.set_tracking_uri(uri)
    try:
        exp = mlflow.create_experiment("openai", artifact_location=(tmp_path / "artifacts").as_uri())
        with openai_server() as srv:
            monkeypatch.setenv("OPENAI_BASE_URL", srv.base_url)
            client = make_client(resolve_api_key("OPENAI_API_KEY"))
            with mlflow.start_run(experiment_id=exp) as run:
                result = run_job(
                    client,
                    {"train": files.train, "validation": files.validation},
                    _spec(),
                    state_dir=tmp_path,
                    on_metrics=lambda s, m: mlflow.log_metrics(m, step=s),
                    poll_interval_s=0,
                )
                assert result.fine_tuned_model.startswith(f"ft:{BASE}:") and not result.resumed
                valid = records.splits["validation"][:8]
                report, flat = evaluate_openai(
                    cfg, client, result.fine_tuned_model, valid, data_fingerprint="fp"
                )
                mlflow.log_metrics(flat)
                source = log_openai_model(
                    model_info(
                        result.fine_tuned_model,
                        base_model=BASE,
                        job_id=result.job_id,
                        base_url=None,
                        api_key_env="OPENAI_API_KEY",
                    )
                )
            mc = MlflowClient(uri)
            history = mc.get_metric_history(run.info.run_id, "train_loss")
            assert [m.step for m in history] == [1, 2, 3, 4]
            assert sorted(m.step for m in mc.get_metric_history(run.info.run_id, "valid_loss")) == [
                1,
                2,
                3,
                4,
            ]
            assert mc.get_metric_history(run.info.run_id, "train_mean_token_accuracy")
            assert report["finetuned"]["rougeL"] > report["base"]["rougeL"] + 0.3
            row = report["metrics"]["rougeL"]
            assert row["significant"] and row["delta_ci_low"] > 0 and "eval_loss" not in report["finetuned"]
            assert all(s["base"] == BASE_ANSWER for s in report["samples"])
            mc.create_registered_model("lore-openai")
            mv = mc.create_model_version("lore-openai", source, run_id=run.info.run_id)
            before = len(srv.requests)
            model = mlflow.pyfunc.load_model(f"models:/lore-openai/{mv.version}")
            q = valid[0].messages[:-1]
            answer = model.predict({"messages": q})
            assert srv.requests[before:] == [("POST", "/v1/chat/completions")]
            assert answer and answer[0] != BASE_ANSWER
        # The key is in no file the run wrote and in no log line.
        assert TEST_KEY.encode() not in mlflow_db.read_bytes()
        for p in tmp_path.rglob("*"):
            if p.is_file():
                assert TEST_KEY.encode() not in p.read_bytes(), p
        assert TEST_KEY not in caplog.text
    finally:
        mlflow.set_tracking_uri("")


def test_ctrl_c_cancels_the_job(tmp_path):
    _, _, files = lore_files()

    def interrupt(step, metrics):
        if step == 2:
            raise KeyboardInterrupt

    with openai_server() as srv:
        client = make_client(TEST_KEY, srv.base_url)
        with pytest.raises(KeyboardInterrupt):
            run_job(
                client,
                {"train": files.train},
                _spec(),
                state_dir=tmp_path,
                on_metrics=interrupt,
                poll_interval_s=0,
            )
        (job_id,) = srv.jobs
        assert srv.cancelled() == [job_id] and srv.jobs[job_id]["status"] == "cancelled"
        # A cancelled job is not resumed: the next run starts a new one.
        run_job(client, {"train": files.train}, _spec(), state_dir=tmp_path, poll_interval_s=0)
        assert srv.created_jobs() == 2


def test_failed_job_raises_and_is_not_resumed(tmp_path):
    _, _, files = lore_files()
    with openai_server(fail_jobs=True) as srv:
        client = make_client(TEST_KEY, srv.base_url)
        with pytest.raises(JobFailed, match="failed: invalid_training_file: bad data"):
            run_job(client, {"train": files.train}, _spec(), state_dir=tmp_path, poll_interval_s=0)
        assert JobState(tmp_path).get(job_fingerprint(files.train, None, _spec())) is None


CRASHING_RUN = """
import sys, time
sys.path.insert(0, {root!r})
from tuneline.openai_backend.client import make_client
from tuneline.openai_backend.jobs import JobSpec, run_job
files = open({train!r}).read()
client = make_client({key!r}, {url!r})
run_job(client, {{"train": files}}, JobSpec(model={base!r}, suffix="lore", seed=7),
        state_dir={state!r}, poll_interval_s=3600)
"""


def test_rerun_after_a_crash_attaches_instead_of_paying_twice(tmp_path):
    _, _, files = lore_files()
    train = tmp_path / "train.jsonl"
    train.write_text(files.train)
    with openai_server() as srv:
        script = CRASHING_RUN.format(
            root=str(ROOT), train=str(train), key=TEST_KEY, url=srv.base_url, base=BASE, state=str(tmp_path)
        )
        proc = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": str(ROOT)})
        try:
            deadline = time.monotonic() + 60
            while not srv.jobs and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.1)
            time.sleep(0.5)  # the job id is saved right after the create call returns
        finally:
            proc.kill()  # SIGKILL: no handler runs, nothing is cancelled
            proc.wait()
        assert srv.created_jobs() == 1 and srv.cancelled() == []
        client = make_client(TEST_KEY, srv.base_url)
        result = run_job(client, {"train": files.train}, _spec(), state_dir=tmp_path, poll_interval_s=0)
        assert result.resumed and srv.created_jobs() == 1
        # Without the saved id, the job is found by its fingerprint in the API's job list.
        (tmp_path / "openai_jobs.json").unlink()
        again = run_job(client, {"train": files.train}, _spec(), state_dir=tmp_path, poll_interval_s=0)
        assert again.resumed and again.fine_tuned_model == result.fine_tuned_model
        assert srv.created_jobs() == 1


def test_missing_key_is_a_user_error(monkeypatch):
    monkeypatch.delenv("TUNELINE_TEST_NO_KEY", raising=False)
    with pytest.raises(MissingKeyError, match="TUNELINE_TEST_NO_KEY"):
        resolve_api_key("TUNELINE_TEST_NO_KEY")
    assert resolve_api_key("TUNELINE_TEST_NO_KEY", "s", lambda name: "from-secret") == "from-secret"


@pytest.mark.slow
def test_run_py_end_to_end_through_the_pipeline(tmp_path):
    """`python run.py --config configs/openai-sft.yaml` against the server: trained, evaluated,
    registered; the key appears in none of the state the run wrote nor its output."""
    home = tmp_path / "home"
    with openai_server() as srv:
        env = {
            **os.environ,
            "TUNELINE_HOME": str(home),
            "OPENAI_API_KEY": TEST_KEY,
            "OPENAI_BASE_URL": srv.base_url,
        }
        env.pop("MLFLOW_TRACKING_URI", None)
        cmd = [
            sys.executable,
            str(ROOT / "run.py"),
            "--config",
            str(ROOT / "configs" / "openai-sft.yaml"),
            "--set",
            "train.openai.poll_interval_s=0.01",
            "--set",
            "eval.max_samples=8",
        ]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=ROOT)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
        assert "train_openai" in out.stdout and "registered models:/lorekeep-openai/1" in out.stdout
        assert srv.created_jobs() == 1
        assert TEST_KEY not in out.stdout + out.stderr
        for p in home.rglob("*"):
            if p.is_file():
                assert TEST_KEY.encode() not in p.read_bytes(), p
