"""Preference tuning (DPO / ORPO): load -> format -> train -> evaluate -> register.

The pairs are tokenized inside the train step, with the chat template chosen by
format_records, so there is no separate tokenize step.
"""

from __future__ import annotations

from zenml import pipeline

from steps.evaluate_preferences import evaluate_preferences
from steps.format_records import format_records
from steps.load_dataset import load_dataset
from steps.register_model import register_model
from steps.train_preferences import train_preferences
from tuneline.config import EvalStage, PipelineConfig, TrainStage


@pipeline(name="tuneline_preference")
def preference_pipeline(config: PipelineConfig, fingerprints: dict[str, str]) -> None:
    dataset = load_dataset(
        data_config=config.data,
        base_dir=config.base_dir,
        source_fingerprint=fingerprints["data"],
        kind=config.kind,
    )
    chat_template, _ = format_records(
        dataset=dataset,
        model_config=config.model,
        template_config=config.template,
        base_dir=config.base_dir,
        local_files_fingerprint=fingerprints["local_files"],
    )
    model = train_preferences(
        dataset=dataset,
        chat_template=chat_template,
        config=TrainStage.of(config),
        fingerprints=fingerprints,
    )
    report, _ = evaluate_preferences(model=model, dataset=dataset, config=EvalStage.of(config))
    register_model(model=model, eval_report=report, dataset=dataset, config=config)
