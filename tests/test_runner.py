"""Per-step settings: only the train step gets GPU resources and the step operator."""

from __future__ import annotations

from pipelines.runner import STEPS, _step_options
from tuneline.config import load_config


def test_resources_and_step_operator_go_to_the_train_step_only():
    cfg = load_config(
        "configs/sft.yaml",
        [
            "train.resources.gpu_count=2",
            "train.resources.memory=40GB",
            "train.resources.step_operator=gpu-op",
        ],
    )
    opts = _step_options(cfg, "tracker", STEPS["sft_pipeline"])
    train = opts["train_model"]
    assert train["step_operator"] == "gpu-op"
    res = train["settings"]["resources"]
    assert res.gpu_count == 2 and res.memory == "40GB"
    for name in ("load_dataset", "tokenize_dataset", "evaluate_model", "register_model"):
        assert "step_operator" not in opts[name] and "resources" not in opts[name].get("settings", {})
    # Every step that logs gets the experiment tracker; formatting logs nothing.
    assert opts["evaluate_model"]["experiment_tracker"] == "tracker"
    assert "format_records" not in opts


def test_experiment_name_reaches_the_tracker_settings():
    cfg = load_config("configs/sft.yaml", ["tracking.experiment_name=my-exp"])
    opts = _step_options(cfg, "tracker", STEPS["sft_pipeline"])
    assert opts["train_model"]["settings"]["experiment_tracker"] == {"experiment_name": "my-exp"}
