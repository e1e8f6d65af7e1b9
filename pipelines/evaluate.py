"""Standalone evaluation: load -> format -> tokenize -> resolve the model -> evaluate. Registers nothing.

`config` prepares the data exactly as a training run of it would; `eval_config` is what
evaluation reads, whose model.* is the model the scored one started from (the comparison
base, see `tuneline.evaluate.standalone.recorded_start`).
"""

from __future__ import annotations

from zenml import pipeline

from pipelines._data import format_for, load, tokenize
from steps.evaluate_model import evaluate_model
from steps.evaluate_preferences import evaluate_preferences
from steps.resolve_model import resolve_model
from tuneline.config import EvalStage, PipelineConfig


@pipeline(name="tuneline_evaluate")
def evaluate_pipeline(
    config: PipelineConfig,
    fingerprints: dict[str, str],
    eval_config: EvalStage,
    model_reference: str,
    model_fingerprint: str,
) -> None:
    dataset = load(config, fingerprints)
    if config.kind == "preference":
        model = resolve_model(reference=model_reference, fingerprint=model_fingerprint)
        evaluate_preferences(model=model, dataset=dataset, config=eval_config)
        return
    chat_template = format_for(dataset, config, fingerprints)
    tokenized = tokenize(dataset, chat_template, config)
    model = resolve_model(reference=model_reference, fingerprint=model_fingerprint)
    evaluate_model(model=model, tokenized=tokenized, dataset=dataset, config=eval_config)
