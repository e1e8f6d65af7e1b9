"""Score a preference-tuned model against its base: does it prefer the chosen answers?"""

from __future__ import annotations

from typing import Annotated

from zenml import log_metadata, step

from steps._tracking import log_metrics
from steps._training import local_reference_model
from tuneline.artifacts import ModelArtifact
from tuneline.config import ProjectConfig
from tuneline.data.records import RecordSet
from tuneline.evaluation import compare, load_finetuned, preference_scores
from tuneline.modeling import load_model


@step
def evaluate_preferences(
    model: ModelArtifact,
    dataset: RecordSet,
    config: dict,
) -> Annotated[dict, "eval_report"]:
    from transformers import AutoTokenizer

    cfg = ProjectConfig.model_validate(config)
    if not cfg.eval.enabled:
        return {"enabled": False}
    tokenizer = AutoTokenizer.from_pretrained(model.path)
    records = dataset.splits.get(cfg.eval.split, [])[: cfg.eval.max_samples]
    vocab = len(tokenizer)
    # The base to beat is where training started: the reference (e.g. SFT) model when there is one.
    ref = local_reference_model(cfg).train.preference.reference_model
    base = load_model(cfg.model, cfg.base_dir, vocab_size=vocab)
    if ref:
        base = load_finetuned(ref, base)
    base_scores = preference_scores(base, tokenizer, records) if cfg.eval.compare_base else {}
    del base
    tuned = load_finetuned(model.path, load_model(cfg.model, cfg.base_dir, vocab_size=vocab))
    tuned_scores = preference_scores(tuned, tokenizer, records)
    metrics = compare(base_scores, tuned_scores)
    log_metrics(metrics)
    log_metadata(metadata=metrics, infer_artifact=True)
    return {
        "enabled": True,
        "metrics": metrics,
        "base": base_scores,
        "finetuned": tuned_scores,
        "num_pairs": len(records),
    }
