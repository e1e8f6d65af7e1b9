"""The steps every pipeline shares, wired once: load -> format -> tokenize, then train -> evaluate.

Plain functions called inside a `@pipeline` body, so each pipeline (the plain ones, the gated
retraining ones, a sweep trial) states only where it differs: what comes before, and whether
the model is registered.
"""

from __future__ import annotations

from typing import Any

from steps.evaluate_model import evaluate_model
from steps.evaluate_preferences import evaluate_preferences
from steps.format_records import format_records
from steps.load_dataset import load_dataset
from steps.tokenize_dataset import tokenize_dataset
from steps.train_model import train_model
from steps.train_preferences import train_preferences
from tuneline.config import EvalStage, PipelineConfig, TrainStage


def load(config: PipelineConfig, fingerprints: dict[str, str]) -> Any:
    return load_dataset(
        data_config=config.data,
        base_dir=config.base_dir,
        source_fingerprint=fingerprints["data"],
        kind=config.kind,
    )


def format_for(dataset: Any, config: PipelineConfig, fingerprints: dict[str, str]) -> Any:
    """The chat template chosen for this model (the formatted examples go to the dashboard)."""
    chat_template, _ = format_records(
        dataset=dataset,
        model_config=config.model,
        template_config=config.template,
        base_dir=config.base_dir,
        local_files_fingerprint=fingerprints["local_files"],
    )
    return chat_template


def tokenize(dataset: Any, chat_template: Any, config: PipelineConfig) -> Any:
    return tokenize_dataset(
        dataset=dataset,
        chat_template=chat_template,
        model_config=config.model,
        template_config=config.template,
        tokenize_config=config.tokenize,
        base_dir=config.base_dir,
    )


def train_and_evaluate(dataset: Any, config: PipelineConfig, fingerprints: dict[str, str]) -> tuple[Any, Any]:
    """SFT / continued pretraining: format -> tokenize -> train -> evaluate; (model, eval report)."""
    chat_template = format_for(dataset, config, fingerprints)
    tokenized = tokenize(dataset, chat_template, config)
    model = train_model(
        tokenized=tokenized,
        chat_template=chat_template,
        config=TrainStage.of(config),
        fingerprints=fingerprints,
    )
    report, _ = evaluate_model(model=model, tokenized=tokenized, dataset=dataset, config=EvalStage.of(config))
    return model, report


def train_and_evaluate_preferences(
    dataset: Any, config: PipelineConfig, fingerprints: dict[str, str]
) -> tuple[Any, Any]:
    """DPO / ORPO / KTO: format -> train (the pairs are tokenized inside) -> evaluate."""
    chat_template = format_for(dataset, config, fingerprints)
    model = train_preferences(
        dataset=dataset,
        chat_template=chat_template,
        config=TrainStage.of(config),
        fingerprints=fingerprints,
    )
    report, _ = evaluate_preferences(model=model, dataset=dataset, config=EvalStage.of(config))
    return model, report
