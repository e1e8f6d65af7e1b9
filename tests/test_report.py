"""What people see: which figures are curves and which are facts, the plots, the progress lines."""

from __future__ import annotations

import io
import math

import pytest

from tuneline.report import (
    ProgressLine,
    eval_metrics_and_params,
    format_duration,
    plots,
    stats_params,
    training_metrics_and_params,
)

PNG = b"\x89PNG\r\n\x1a\n"


# --- curves vs facts -------------------------------------------------------------------------


def test_trainer_log_events_become_training_curves():
    step_event = {"loss": 1.5, "grad_norm": 0.7, "learning_rate": 2e-3, "epoch": 0.5}
    assert training_metrics_and_params(step_event) == (
        {"training/loss": 1.5, "training/grad_norm": 0.7, "training/learning_rate": 2e-3},
        {},
    )
    eval_event = {"eval_loss": 2.0, "eval_runtime": 0.3, "eval_samples_per_second": 9.0, "epoch": 1.0}
    assert training_metrics_and_params(eval_event) == ({"training/eval_loss": 2.0}, {})
    # TRL's preference curves keep their own grouping under training/.
    assert training_metrics_and_params({"rewards/margins": 0.2})[0] == {"training/rewards/margins": 0.2}
    # The non-finite guard's value is a curve point too (NaN kept: a broken run must show).
    curves, _ = training_metrics_and_params({"loss": math.nan})
    assert math.isnan(curves["training/loss"])
    # The Trainer's end-of-training event: its average loss is a run score, its timings are noise.
    end = {"train_runtime": 13.7, "train_samples_per_second": 46.6, "train_loss": 2.9, "epoch": 1.4}
    assert training_metrics_and_params(end) == ({"train_loss": 2.9}, {})


def test_the_recipes_final_figures_split_into_scores_and_facts():
    final = {
        "trainable_params": 1234.0,
        "total_params": 5678.0,
        "trainable_fraction": 0.2173,
        "peak_memory_mb": 512.5,
        "tokens_per_second": 1850.25,
        "padding_efficiency": 0.68,
        "train_runtime": 15.6,
        "global_step": 40.0,
    }
    scores, facts = training_metrics_and_params(final)
    assert scores == {"peak_memory_mb": 512.5, "tokens_per_second": 1850.25, "train_runtime": 15.6}
    assert facts == {
        "stats.train.trainable_params": "1234",
        "stats.train.total_params": "5678",
        "stats.train.trainable_fraction": "0.2173",
        "stats.train.padding_efficiency": "0.68",
        "stats.train.global_step": "40",
    }


def test_eval_scores_stay_metrics_and_their_intervals_become_params():
    flat = {
        "base_rougeL": 0.0,
        "base_rougeL_ci_low": 0.0,
        "finetuned_rougeL": 0.5069,
        "finetuned_rougeL_ci_high": 0.61,
        "delta_rougeL": 0.5069,
        "delta_rougeL_ci_low": 0.3548,
        "delta_rougeL_p_value": 0.001,
        "delta_rougeL_significant": 1.0,
        "vs_champion_delta_rougeL": 0.1,
    }
    metrics, params = eval_metrics_and_params(flat)
    assert metrics == {
        "base_rougeL": 0.0,
        "finetuned_rougeL": 0.5069,
        "delta_rougeL": 0.5069,
        "vs_champion_delta_rougeL": 0.1,
    }
    assert params == {
        "stats.eval.base_rougeL_ci_low": "0",
        "stats.eval.finetuned_rougeL_ci_high": "0.61",
        "stats.eval.delta_rougeL_ci_low": "0.3548",
        "stats.eval.delta_rougeL_p_value": "0.001",
        "stats.eval.delta_rougeL_significant": "True",
    }


def test_stats_params_flatten_numbers_and_flags_and_skip_the_rest():
    stats = {"n_out": 438, "mean_len": 33.1, "packing": False, "tokenizer": {"vocab_size": 512}, "name": "x"}
    assert stats_params("tokenize.train", stats) == {
        "stats.tokenize.train.n_out": "438",
        "stats.tokenize.train.mean_len": "33.1",
        "stats.tokenize.train.packing": "False",
        "stats.tokenize.train.tokenizer.vocab_size": "512",
    }


def test_the_training_step_logs_curves_scores_and_facts_to_mlflow(tmp_path):
    """Through the step adapter into a real SQLite MLflow store."""
    import mlflow
    from mlflow import MlflowClient

    from steps._training import log_training_metrics

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    try:
        exp = mlflow.create_experiment("report", artifact_location=(tmp_path / "a").as_uri())
        with mlflow.start_run(experiment_id=exp) as run:
            for step, loss in ((1, 3.0), (2, 2.0)):
                log_training_metrics({"loss": loss, "learning_rate": 1e-3, "epoch": step / 2}, step)
            log_training_metrics({"trainable_params": 10.0, "tokens_per_second": 99.0, "global_step": 2.0}, 2)
    finally:
        mlflow.set_tracking_uri(None)
    client = MlflowClient(tracking_uri=uri)
    data = client.get_run(run.info.run_id).data
    assert [m.value for m in client.get_metric_history(run.info.run_id, "training/loss")] == [3.0, 2.0]
    assert set(data.metrics) == {"training/loss", "training/learning_rate", "tokens_per_second"}
    assert data.params == {"stats.train.trainable_params": "10", "stats.train.global_step": "2"}


# --- plots ------------------------------------------------------------------------------------


def test_loss_curves_from_a_trainer_log_history():
    history = [
        {"step": 10, "loss": 3.0, "learning_rate": 1e-3},
        {"step": 10, "eval_loss": 2.5},
        {"step": 20, "loss": 2.0},
        {"step": 20, "eval_loss": 2.1},
        {"step": 20, "train_runtime": 3.0, "train_loss": 2.5},
    ]
    assert plots.loss_curves(history).startswith(PNG)
    assert plots.loss_curves([{"step": 1, "train_runtime": 1.0}]) is None


def test_token_length_histogram():
    png = plots.token_length_histogram({"train": [20, 25, 48, 52], "validation": [22, 50]}, max_length=64)
    assert png.startswith(PNG)
    assert plots.token_length_histogram({"train": [30]}, max_length=4096).startswith(PNG)  # cut off-chart
    assert plots.token_length_histogram({"train": []}) is None


def _row(base, tuned, significant=True):
    est = lambda v: None if v is None else {"value": v, "ci_low": v * 0.9, "ci_high": v * 1.1}  # noqa: E731
    return {"base": est(base), "tuned": est(tuned), "delta": None, "significant": significant}


def test_metric_bars_with_intervals_and_a_rescored_champion():
    report = {
        "enabled": True,
        "num_samples": 8,
        "metrics": {"rougeL": _row(0.0, 0.5), "eval_loss": _row(6.8, 1.6), "exact_match": _row(None, 0.0)},
        "champion": {"status": "rescored", "version": "3", "intervals": {"rougeL": {"value": 0.4}}},
    }
    assert plots.metric_bars(report).startswith(PNG)
    assert plots.metric_bars({"enabled": True, "metrics": {}}) is None


def test_figures_go_right_under_the_heading_of_a_page():
    block = plots.figures_html([("loss", b"png-bytes"), ("nothing to draw", None)])
    assert block.count("<figure>") == 1 and "data:image/png;base64," in block
    page = "<html><body><h1>report</h1><table></table></body></html>"
    assert plots.embed_after_heading(page, block) == page.replace("</h1>", "</h1>" + block)
    assert plots.embed_after_heading(page, "") == page


# --- progress lines ---------------------------------------------------------------------------


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_progress_in_a_log_file_prints_every_tenth_and_the_end():
    out, clock = io.StringIO(), Clock()
    line = ProgressLine("train", 40, stream=out, tty=False, clock=clock)
    for step in range(1, 41):
        clock.t += 0.5
        line.update(step, f"loss {4 - step / 20:.3f}")
    line.finish()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert [ln.split()[1] for ln in lines] == [f"{n}/40" for n in range(4, 41, 4)]
    assert lines[0] == "train  4/40 [10%] loss 3.800 ETA 18s"
    assert lines[-1] == "train  40/40 [100%] loss 2.000 done in 20s"


def test_progress_on_a_terminal_rewrites_one_line_at_most_once_a_second():
    out, clock = io.StringIO(), Clock()
    line = ProgressLine(
        "eval generate", 48, unit="prompts", show_rate=True, stream=out, tty=True, clock=clock
    )
    for done in range(8, 49, 8):
        clock.t += 0.4
        line.update(done)
    line.finish()
    text = out.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n")
    frames = text.rstrip("\n").split("\r")[1:]
    assert len(frames) == 3  # the first update, one more a second later, and the final line
    assert frames[0].startswith("eval generate  8/48 prompts [16%] 20.0 prompts/s ETA 2s")
    assert frames[-1].strip() == "eval generate  48/48 prompts [100%] 20.0 prompts/s done in 2s"


def test_a_resumed_run_counts_its_eta_from_where_it_resumed():
    out, clock = io.StringIO(), Clock()
    line = ProgressLine("train", 300, initial=200, stream=out, tty=False, clock=clock)
    clock.t += 10
    line.update(250)
    assert "250/300 [83%]" in out.getvalue() and "ETA 10s" in out.getvalue()


@pytest.mark.parametrize(
    ("seconds", "text"), [(0.4, "0s"), (42, "42s"), (72, "1m12s"), (3600 + 180, "1h03m")]
)
def test_durations_read_like_a_clock(seconds, text):
    assert format_duration(seconds) == text


def test_training_prints_one_progress_line_and_no_raw_dicts_or_bars(tmp_path, capfd):
    """A real (tiny) training run: the Trainer's printer and the checkpoint bars are gone."""
    from tests._train_script import tiny_cfg, tiny_data, tiny_tokenizer
    from tuneline.train import train

    train(
        tiny_cfg(max_steps=4, save_steps=2, eval_steps=2),
        tiny_tokenizer(),
        tiny_data(),
        output_dir=str(tmp_path / "out"),
        checkpoint_dir=str(tmp_path / "ckpt"),
        run_identity={"config_hash": "c", "data_fingerprint": "d", "base_model": "tiny"},
    )
    captured = capfd.readouterr()
    err = captured.err
    assert "train  4/4 [100%] loss " in err and " eval " in err and " tok/s done in " in err, err
    assert "{'loss'" not in captured.out + err and "Writing model shards" not in err, err
