"""Score a preference-tuned model against where it started: does it prefer the chosen answers?"""

from __future__ import annotations

from typing import Annotated

from zenml import log_metadata, step

from steps._tracking import log_metrics
from steps._training import local_reference_model
from tuneline.artifacts import ModelArtifact
from tuneline.config import ProjectConfig
from tuneline.data.records import RecordSet
from tuneline.evaluation import compare, evaluate_preference


@step
def evaluate_preferences(
    model: ModelArtifact,
    dataset: RecordSet,
    config: dict,
) -> Annotated[dict, "eval_report"]:
    from transformers import AutoTokenizer

    cfg = local_reference_model(ProjectConfig.model_validate(config))
    if not cfg.eval.enabled:
        return {"enabled": False}
    tokenizer = AutoTokenizer.from_pretrained(model.path)
    records = dataset.splits.get(cfg.eval.split, [])[: cfg.eval.max_samples]
    base, tuned = evaluate_preference(cfg, model.path, tokenizer, records)
    metrics = compare(base, tuned)
    log_metrics(metrics)
    log_metadata(metadata=metrics, infer_artifact=True)
    return {"enabled": True, "metrics": metrics, "base": base, "finetuned": tuned, "num_pairs": len(records)}
