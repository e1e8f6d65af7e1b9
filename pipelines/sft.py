"""Supervised fine-tuning and continued pretraining: load -> format -> tokenize -> train -> evaluate -> register."""

from __future__ import annotations

from zenml import pipeline

from pipelines._data import load, train_and_evaluate
from steps.register_model import register_model
from tuneline.config import PipelineConfig


@pipeline(name="tuneline_sft")
def sft_pipeline(config: PipelineConfig, fingerprints: dict[str, str]) -> None:
    dataset = load(config, fingerprints)
    model, report = train_and_evaluate(dataset, config, fingerprints)
    register_model(model=model, eval_report=report, dataset=dataset, config=config)
