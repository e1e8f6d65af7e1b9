"""Per-step settings and run identity, read from the pipelines themselves."""

from __future__ import annotations

import pytest

from pipelines.runner import _step_options, pipeline_for, pipeline_steps
from tuneline.config import PipelineConfig, load_config

FINGERPRINTS = {"data": "d", "local_files": "l"}


def steps_of(cfg):
    return pipeline_steps(pipeline_for(cfg), PipelineConfig.of(cfg), FINGERPRINTS)


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (
            "configs/sft.yaml",
            [
                "load_dataset",
                "format_records",
                "tokenize_dataset",
                "train_model",
                "evaluate_model",
                "register_model",
            ],
        ),
        (
            "configs/dpo.yaml",
            ["load_dataset", "format_records", "train_preferences", "evaluate_preferences", "register_model"],
        ),
    ],
)
def test_the_step_list_comes_from_the_pipeline(config, expected):
    assert list(steps_of(load_config(config))) == expected


def test_resources_and_step_operator_go_to_the_train_step_only():
    cfg = load_config(
        "configs/sft.yaml",
        [
            "train.resources.gpu_count=2",
            "train.resources.memory=40GB",
            "train.resources.step_operator=gpu-op",
        ],
    )
    opts = _step_options(cfg, "tracker", steps_of(cfg))
    train = opts["train_model"]
    assert train["step_operator"] == "gpu-op"
    res = train["settings"]["resources"]
    assert res.gpu_count == 2 and res.memory == "40GB"
    for name in ("load_dataset", "tokenize_dataset", "evaluate_model", "register_model"):
        assert "step_operator" not in opts[name] and "resources" not in opts[name].get("settings", {})
    # Every step that logs gets the experiment tracker; formatting logs nothing.
    assert opts["evaluate_model"]["experiment_tracker"] == "tracker"
    assert "format_records" not in opts


def test_preference_training_gets_the_gpu_and_its_evaluation_does_not():
    cfg = load_config("configs/dpo.yaml", ["train.resources.gpu_count=1", "train.resources.step_operator=op"])
    opts = _step_options(cfg, "tracker", steps_of(cfg))
    assert opts["train_preferences"]["step_operator"] == "op"
    assert "step_operator" not in opts["evaluate_preferences"]
    assert {n for n, o in opts.items() if o.get("experiment_tracker")} == {
        "load_dataset",
        "train_preferences",
        "evaluate_preferences",
        "register_model",
    }


def test_experiment_name_reaches_the_tracker_settings():
    cfg = load_config("configs/sft.yaml", ["tracking.experiment_name=my-exp"])
    opts = _step_options(cfg, "tracker", steps_of(cfg))
    assert opts["train_model"]["settings"]["experiment_tracker"] == {"experiment_name": "my-exp"}
