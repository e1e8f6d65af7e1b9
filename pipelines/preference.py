"""Preference tuning (DPO / ORPO): load -> format -> train -> evaluate -> register.

The pairs are tokenized inside the train step, with the chat template chosen by
format_records, so there is no separate tokenize step.
"""

from __future__ import annotations

from zenml import pipeline

from pipelines._data import format_for, load
from steps.evaluate_preferences import evaluate_preferences
from steps.register_model import register_model
from steps.train_preferences import train_preferences
from tuneline.config import EvalStage, PipelineConfig, TrainStage


@pipeline(name="tuneline_preference")
def preference_pipeline(config: PipelineConfig, fingerprints: dict[str, str]) -> None:
    dataset = load(config, fingerprints)
    chat_template = format_for(dataset, config, fingerprints)
    model = train_preferences(
        dataset=dataset,
        chat_template=chat_template,
        config=TrainStage.of(config),
        fingerprints=fingerprints,
    )
    report, _ = evaluate_preferences(model=model, dataset=dataset, config=EvalStage.of(config))
    register_model(model=model, eval_report=report, dataset=dataset, config=config)
