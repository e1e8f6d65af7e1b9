"""Score the fine-tuned model against its base on held-out data."""

from __future__ import annotations

import json
from typing import Annotated

from zenml import log_metadata, step

from steps._tracking import active_run, log_metrics
from tuneline.artifacts import ModelArtifact
from tuneline.config import ProjectConfig
from tuneline.data.records import RecordSet
from tuneline.evaluation import compare, evaluate_sft
from tuneline.tokenize import TokenizedDataset


@step
def evaluate_model(
    model: ModelArtifact,
    tokenized: TokenizedDataset,
    dataset: RecordSet,
    config: dict,
) -> Annotated[dict, "eval_report"]:
    from transformers import AutoTokenizer

    cfg = ProjectConfig.model_validate(config)
    if not cfg.eval.enabled:
        return {"enabled": False}
    # The tokenizer saved with the model: this also proves it carries the training chat template.
    tokenizer = AutoTokenizer.from_pretrained(model.path)
    records = dataset.splits.get(cfg.eval.split, [])[: cfg.eval.max_samples]
    base, tuned, gen = evaluate_sft(cfg, model.path, tokenizer, tokenized.splits.get(cfg.eval.split), records)
    metrics = compare(base, tuned)
    log_metrics(metrics)
    samples = [
        {"prompt": p, "reference": r, "prediction": pr}
        for p, r, pr in list(zip(gen.prompts, gen.references, gen.predictions, strict=True))[:20]
    ]
    if active_run() is not None:
        import mlflow

        mlflow.log_text(json.dumps(samples, indent=2, ensure_ascii=False), "eval/samples.json")
    log_metadata(metadata=metrics, infer_artifact=True)
    return {
        "enabled": True,
        "metrics": metrics,
        "base": base,
        "finetuned": tuned,
        "num_generated": len(gen.predictions),
        "samples": samples[:5],
    }
