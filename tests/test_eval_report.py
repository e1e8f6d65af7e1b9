"""The evaluation that decides: metric values through the pipeline's evaluation function on a
real tiny model, intervals, the report and its HTML, the run summary, the champion on the same
eval set (re-scored vs recorded, in a real SQLite MLflow registry) and the unevaluated gate."""

from __future__ import annotations

import json

import mlflow
import pytest
from mlflow import MlflowClient

from tests.conftest import chat, tiny_project
from tuneline.data.records import Record
from tuneline.evaluate.generate import generate_answers, load_start_model
from tuneline.evaluate.judge import evaluate_preference, evaluate_sft
from tuneline.evaluate.report import eval_set_fingerprint, render_html, wins_and_losses
from tuneline.evaluate.scoring import score
from tuneline.tokenize import end_of_turn_token_ids, prepare_tokenizer, tokenize_split

N = 6


def project(tmp_path, **sections):
    """The shared tiny project, generating short answers and bootstrapping 200 resamples."""
    evaluation = {"max_new_tokens": 6, "bootstrap_resamples": 200, **sections.pop("eval", {})}
    return tiny_project(tmp_path, eval=evaluation, **sections)


@pytest.fixture
def sft(tmp_path, tiny_tokenizer, tuneline_home):
    """A "fine-tuned" model dir (another seed of the tiny model) and eval records whose references
    are its own greedy answers for the first half, so its exact match is known: 0.5."""
    cfg = project(tmp_path)
    tok = prepare_tokenizer(tiny_tokenizer, cfg.template, cfg.base_dir)
    tuned_cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"init_seed": 7})})
    tuned = load_start_model(tuned_cfg, len(tok))
    model_dir = tmp_path / "tuned"
    tuned.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    questions = [f"<script>alert({i})</script> & question {i}?" for i in range(N)]
    probe = generate_answers(
        tuned,
        tok,
        [chat(q, "x") for q in questions],
        max_new_tokens=cfg.eval.max_new_tokens,
        batch_size=cfg.eval.batch_size,
        stop_token_ids=end_of_turn_token_ids(tok),
        tokenize_cfg=cfg.tokenize,
    )
    refs = [p if i < N // 2 else f"<b>never said</b> {i}" for i, p in enumerate(probe.predictions)]
    records = [chat(q, r) for q, r in zip(questions, refs, strict=True)]
    split = tokenize_split(records, tok, cfg.tokenize)
    return cfg, tok, model_dir, records, split


def test_sft_report_scores_real_generations_with_intervals(sft):
    cfg, tok, model_dir, records, split = sft
    report, flat = evaluate_sft(cfg, str(model_dir), tok, split, records, data_fingerprint="d1")
    json.dumps(report)  # a plain JSON artifact
    m = report["metrics"]
    assert list(m) == ["rouge1", "rouge2", "rougeL", "rougeLsum", "exact_match", "eval_loss"]
    assert report["decisive_metric"] == "rougeL" and report["greater_is_better"] is True
    # Known by construction: the tuned model's own answers are the first half of the references.
    assert m["exact_match"]["tuned"]["value"] == 0.5
    tuned_answers = [s["tuned"] for s in report["samples"]]
    assert [s["scores"]["tuned"]["exact_match"] for s in report["samples"]] == [1.0] * 3 + [0.0] * 3
    # The same numbers as scoring the answers directly, and the paired delta is tuned - base.
    direct = score(["rouge"], tuned_answers, [r.messages[-1]["content"] for r in records], n_resamples=200)
    assert m["rougeL"]["tuned"]["value"] == direct["rougeL"].value
    assert (m["rougeL"]["tuned"]["ci_low"], m["rougeL"]["tuned"]["ci_high"]) == (
        direct["rougeL"].ci_low,
        direct["rougeL"].ci_high,
    )
    for key, row in m.items():
        for side in ("base", "tuned"):
            e = row[side]
            assert e["ci_low"] <= e["value"] <= e["ci_high"], (key, side, e)
        assert row["delta"] == row["tuned"]["value"] - row["base"]["value"]
        assert row["delta_ci_low"] <= row["delta_ci_high"] and 0 < row["p_value"] <= 1
    assert report["finetuned"]["exact_match"] == 0.5 and set(report["base"]) == set(m)
    assert flat["finetuned_exact_match"] == 0.5 and "delta_rougeL_ci_low" in flat
    assert "eval_loss" not in report["samples"][0]["scores"]["tuned"]  # a loss row is not an eval sample
    assert report["eval_fingerprint"] == eval_set_fingerprint(cfg, "d1") != eval_set_fingerprint(cfg, "d2")
    assert report["champion"]["status"] == "skipped"


def test_report_html_escapes_text_and_lists_every_sample(sft):
    cfg, tok, model_dir, records, split = sft
    report, _ = evaluate_sft(cfg, str(model_dir), tok, split, records, data_fingerprint="d1")
    page = render_html(report)
    assert "<script>" not in page and "<b>never" not in page
    for i in range(len(report["samples"])):
        assert f"&lt;script&gt;alert({i})&lt;/script&gt; &amp; question {i}?" in page
        assert f"&lt;b&gt;never said&lt;/b&gt; {i}" in page or i < N // 2
    assert page.index("rougeL") < page.index("Samples")  # the metric table comes first
    assert page.count("<tr") == 1 + len(report["metrics"]) + 1 + N


def test_summary_shows_deltas_intervals_and_largest_wins_and_losses():
    from pipelines.runner import RunSummary, format_summary

    def sample(i, delta):
        return {
            "question": f"q{i}",
            "base": f"b{i}",
            "tuned": f"t{i}",
            "scores": {"base": {"rougeL": 0.5}, "tuned": {"rougeL": 0.5 + delta}, "delta": {"rougeL": delta}},
        }

    deltas = [0.1, -0.4, 0.0, 0.5, -0.1, 0.3, 0.2, -0.2]
    report = {
        "enabled": True,
        "split": "validation",
        "num_samples": len(deltas),
        "bootstrap": {"n_resamples": 200, "confidence": 0.95},
        "decisive_metric": "rougeL",
        "greater_is_better": True,
        "metrics": {
            "rougeL": {
                "base": {"value": 0.5, "ci_low": 0.4, "ci_high": 0.6},
                "tuned": {"value": 0.55, "ci_low": 0.45, "ci_high": 0.65},
                "delta": 0.05,
                "delta_ci_low": -0.01,
                "delta_ci_high": 0.12,
                "p_value": 0.08,
                "significant": False,
            }
        },
        "samples": [sample(i, d) for i, d in enumerate(deltas)],
        "champion": {"status": "none", "reason": "no version of 'm' holds @champion"},
    }
    wins, losses = wins_and_losses(report)
    assert [i for i, _ in wins] == [3, 5, 6] and [i for i, _ in losses] == [1, 7, 4]
    text = format_summary(RunSummary(pipeline_run="r", status="completed", eval_report=report))
    assert "rougeL 0.5000 0.5500 0.0500 [-0.0100, 0.1200] 0.080" in " ".join(text.split())
    win_block = text.split("largest wins (rougeL):")[1].split("largest losses")[0]
    assert [line.split()[0] for line in win_block.splitlines() if line.strip().startswith("#")] == [
        "#3",
        "#5",
        "#6",
    ]
    loss_block = text.split("largest losses (rougeL):")[1]
    assert "#1 -0.4000  q1" in loss_block and "#4 -0.1000" in loss_block and "#0" not in loss_block
    assert "champion: no version of 'm' holds @champion" in text
    lower = {**report, "decisive_metric": "rougeL", "greater_is_better": False}
    assert [i for i, _ in wins_and_losses(lower)[0]] == [1, 7, 4]  # for a loss, a drop is a win


@pytest.fixture
def registry(mlflow_db):
    uri = f"sqlite:///{mlflow_db}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    yield MlflowClient(tracking_uri=uri, registry_uri=uri)
    mlflow.set_tracking_uri("")
    mlflow.set_registry_uri("")


def _make_champion(client, tmp_path, model_dir, tags):
    exp = client.create_experiment("e", artifact_location=(tmp_path / "art").as_uri())
    run = client.create_run(exp)
    client.log_artifacts(run.info.run_id, str(model_dir), "model")
    client.set_terminated(run.info.run_id)
    client.create_registered_model("tiny")
    mv = client.create_model_version("tiny", f"{run.info.artifact_uri}/model", run.info.run_id, tags=tags)
    client.set_registered_model_alias("tiny", "champion", mv.version)
    return mv


def test_champion_is_rescored_on_another_eval_set_and_reused_on_the_same(sft, registry, tmp_path):
    cfg, tok, model_dir, records, split = sft
    cfg.registry.model_name = "tiny"
    none, _ = evaluate_sft(cfg, str(model_dir), tok, split, records, data_fingerprint="d1", client=registry)
    assert none["champion"] == {"status": "none", "reason": "no version of 'tiny' holds @champion"}

    # The champion was scored on another eval set: it is run on this one now, paired with the candidate.
    mv = _make_champion(registry, tmp_path, model_dir, {"eval.fingerprint": "other", "metric.rougeL": "0.9"})
    report, flat = evaluate_sft(
        cfg, str(model_dir), tok, split, records, data_fingerprint="d1", client=registry
    )
    champ = report["champion"]
    assert champ["status"] == "rescored" and champ["version"] == str(mv.version)
    assert (
        champ["recorded_eval_fingerprint"] == "other"
        and champ["eval_fingerprint"] == report["eval_fingerprint"]
    )
    # The champion is the candidate's own weights: identical scores, sample by sample, and a zero delta.
    assert champ["metrics"]["rougeL"] == report["finetuned"]["rougeL"]
    assert champ["metrics"]["eval_loss"] == report["finetuned"]["eval_loss"]
    assert champ["per_sample"]["exact_match"] == [
        s["scores"]["tuned"]["exact_match"] for s in report["samples"]
    ]
    assert champ["answers"] == [s["tuned"] for s in report["samples"]]
    vs = champ["comparison"]["rougeL"]
    assert vs["delta"] == 0.0 and vs["ci_low"] == vs["ci_high"] == 0.0 and vs["significant"] is False
    assert flat["vs_champion_delta_rougeL"] == 0.0

    # Scored on this eval set before: its recorded scores are used, and marked as such.
    registry.set_model_version_tag("tiny", mv.version, "eval.fingerprint", report["eval_fingerprint"])
    again, _ = evaluate_sft(cfg, str(model_dir), tok, split, records, data_fingerprint="d1", client=registry)
    assert again["champion"]["status"] == "recorded"
    assert again["champion"]["metrics"] == {"rougeL": 0.9}
    assert "per_sample" not in again["champion"] and "comparison" not in again["champion"]

    # No champion comparison when nothing would be promoted.
    cfg.registry.promote = False
    off, _ = evaluate_sft(cfg, str(model_dir), tok, split, records, data_fingerprint="d1", client=registry)
    assert off["champion"]["status"] == "skipped" and "registry.promote" in off["champion"]["reason"]


def test_preference_report_has_accuracy_margin_and_intervals_over_pairs(tmp_path, tiny_tokenizer):
    cfg = project(tmp_path, train={"method": "dpo"})
    tok = prepare_tokenizer(tiny_tokenizer, cfg.template, cfg.base_dir)
    tuned = load_start_model(
        cfg.model_copy(update={"model": cfg.model.model_copy(update={"init_seed": 3})}), len(tok)
    )
    tuned.save_pretrained(tmp_path / "tuned")
    pairs = [
        Record(
            kind="preference",
            messages=[{"role": "user", "content": f"q{i} <i>"}],
            chosen=[{"role": "assistant", "content": f"good answer {i}"}],
            rejected=[{"role": "assistant", "content": f"bad {i}"}],
        )
        for i in range(5)
    ]
    report, _ = evaluate_preference(cfg, str(tmp_path / "tuned"), tok, pairs, data_fingerprint="p")
    assert report["decisive_metric"] == "preference_accuracy"
    assert set(report["metrics"]) == {
        "preference_accuracy",
        "logprob_margin",
        "preference_accuracy_normalized",
        "logprob_margin_normalized",
    }
    for row in report["metrics"].values():
        for side in ("base", "tuned"):
            assert row[side]["ci_low"] <= row[side]["value"] <= row[side]["ci_high"]
    assert len(report["samples"]) == 5 and "good answer 0" in report["samples"][0]["chosen"]
    per_pair = [s["scores"]["tuned"]["preference_accuracy"] for s in report["samples"]]
    assert report["finetuned"]["preference_accuracy"] == sum(per_pair) / 5
    assert "&lt;i&gt;" in render_html(report)


def test_disabled_evaluation_report_says_so():
    from tuneline.evaluate.judge import disabled_report

    report = disabled_report()
    assert report["enabled"] is False and "not registered" in render_html(report)


def test_shipped_metric_keys_match_the_metric_modules():
    from tuneline.config.evaluate import SHIPPED_METRIC_KEYS

    for name, keys in SHIPPED_METRIC_KEYS.items():
        assert set(score([name], ["a b c"], ["a b d"], n_resamples=2)) == set(keys), name
