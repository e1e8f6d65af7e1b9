"""Preference tuning (DPO / ORPO / KTO): load -> format -> train -> evaluate -> register.

The pairs (or labelled answers) are tokenized inside the train step, with the chat template
chosen by format_records, so there is no separate tokenize step.
"""

from __future__ import annotations

from zenml import pipeline

from pipelines._data import load, train_and_evaluate_preferences
from steps.register_model import register_model
from tuneline.config import PipelineConfig


@pipeline(name="tuneline_preference")
def preference_pipeline(config: PipelineConfig, fingerprints: dict[str, str]) -> None:
    dataset = load(config, fingerprints)
    model, report = train_and_evaluate_preferences(dataset, config, fingerprints)
    register_model(model=model, eval_report=report, dataset=dataset, config=config)
