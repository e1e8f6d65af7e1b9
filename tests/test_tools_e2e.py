"""The tool-calling preset end to end on CPU (slow tier): data with tools -> masked tokens ->
training -> tool-call evaluation with intervals -> registry decision on tool_call_accuracy."""

from __future__ import annotations

import pytest

from tests.test_e2e import run_cli

SHORT = [
    "--set",
    "train.max_steps=4",
    "--set",
    "train.eval_steps=4",
    "--set",
    "train.save_steps=4",
    "--set",
    "eval.max_samples=6",
    "--set",
    "eval.bootstrap_resamples=100",
    "--set",
    "registry.model_name=tools-e2e",
]


@pytest.mark.slow
def test_tools_preset_end_to_end(tmp_path):
    from mlflow import MlflowClient

    home = tmp_path / "home"
    r = run_cli(home, "--config", "configs/sft-tools.yaml", *SHORT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-6000:]
    for key in ("tool_call_accuracy", "tool_name_accuracy", "tool_call_parse_rate"):
        assert key in r.stdout, r.stdout[-3000:]

    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    (run,) = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        filter_string="tags.`tuneline.run_type` = 'training'",
    )
    metrics, params = run.data.metrics, run.data.params
    keys = ("tool_call_accuracy", "tool_name_accuracy", "tool_call_parse_rate")
    assert {f"{side}_{k}" for side in ("base", "finetuned", "delta") for k in keys} <= set(metrics)
    # Interval bounds and p-values are one-off figures: params.
    for suffix in ("_ci_low", "_ci_high", "_p_value"):
        assert any(p.endswith(f"tool_call_accuracy{suffix}") for p in params), suffix
