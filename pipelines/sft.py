"""Supervised fine-tuning and continued pretraining: load -> format -> tokenize -> train -> evaluate -> register."""

from __future__ import annotations

from zenml import pipeline

from pipelines._data import format_for, load, tokenize
from steps.evaluate_model import evaluate_model
from steps.register_model import register_model
from steps.train_model import train_model
from tuneline.config import EvalStage, PipelineConfig, TrainStage


@pipeline(name="tuneline_sft")
def sft_pipeline(config: PipelineConfig, fingerprints: dict[str, str]) -> None:
    dataset = load(config, fingerprints)
    chat_template = format_for(dataset, config, fingerprints)
    tokenized = tokenize(dataset, chat_template, config)
    model = train_model(
        tokenized=tokenized,
        chat_template=chat_template,
        config=TrainStage.of(config),
        fingerprints=fingerprints,
    )
    report, _ = evaluate_model(model=model, tokenized=tokenized, dataset=dataset, config=EvalStage.of(config))
    register_model(model=model, eval_report=report, dataset=dataset, config=config)
