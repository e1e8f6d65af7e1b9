"""Standalone evaluation: load -> format -> tokenize -> resolve the model -> evaluate. Registers nothing.

`config` prepares the data exactly as a training run of it would; `eval_config` is what
evaluation reads, whose model.* is the model the scored one started from (the comparison
base, see `tuneline.evaluate.standalone.recorded_start`).
"""

from __future__ import annotations

from zenml import pipeline

from steps.evaluate_model import evaluate_model
from steps.evaluate_preferences import evaluate_preferences
from steps.format_records import format_records
from steps.load_dataset import load_dataset
from steps.resolve_model import resolve_model
from steps.tokenize_dataset import tokenize_dataset
from tuneline.config import EvalStage, PipelineConfig


@pipeline(name="tuneline_evaluate")
def evaluate_pipeline(
    config: PipelineConfig,
    fingerprints: dict[str, str],
    eval_config: EvalStage,
    model_reference: str,
    model_fingerprint: str,
) -> None:
    dataset = load_dataset(
        data_config=config.data,
        base_dir=config.base_dir,
        source_fingerprint=fingerprints["data"],
        kind=config.kind,
    )
    if config.kind == "preference":
        model = resolve_model(reference=model_reference, fingerprint=model_fingerprint)
        evaluate_preferences(model=model, dataset=dataset, config=eval_config)
        return
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
    model = resolve_model(reference=model_reference, fingerprint=model_fingerprint)
    evaluate_model(model=model, tokenized=tokenized, dataset=dataset, config=eval_config)
