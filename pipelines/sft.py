"""Supervised fine-tuning and continued pretraining: load -> format -> tokenize -> train -> evaluate -> register."""

from __future__ import annotations

from zenml import pipeline

from steps.evaluate_model import evaluate_model
from steps.format_records import format_records
from steps.load_dataset import load_dataset
from steps.register_model import register_model
from steps.tokenize_dataset import tokenize_dataset
from steps.train_model import train_model
from tuneline.config import EvalStage, PipelineConfig, TrainStage


@pipeline(name="tuneline_sft")
def sft_pipeline(config: PipelineConfig, fingerprints: dict[str, str]) -> None:
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
    tokenized = tokenize_dataset(
        dataset=dataset,
        chat_template=chat_template,
        model_config=config.model,
        template_config=config.template,
        tokenize_config=config.tokenize,
        base_dir=config.base_dir,
    )
    model = train_model(
        tokenized=tokenized,
        chat_template=chat_template,
        config=TrainStage.of(config),
        fingerprints=fingerprints,
    )
    report, _ = evaluate_model(model=model, tokenized=tokenized, dataset=dataset, config=EvalStage.of(config))
    register_model(model=model, eval_report=report, dataset=dataset, config=config)
