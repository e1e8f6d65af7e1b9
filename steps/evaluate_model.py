"""Score the fine-tuned model against its base on held-out data."""

from __future__ import annotations

import json
from typing import Annotated, Any

from zenml import log_metadata, step

from steps._tracking import active_run, log_metrics
from tuneline.artifacts import ModelArtifact
from tuneline.collate import DataCollator
from tuneline.config import ProjectConfig
from tuneline.data.records import RecordSet
from tuneline.evaluation import compare, eval_loss, generate_answers, load_finetuned
from tuneline.modeling import load_model
from tuneline.tokenization import end_of_turn_token_ids
from tuneline.tokenized import TokenizedDataset


def _score(
    model: Any, tokenizer: Any, split: Any, records: list, cfg: ProjectConfig, collator: Any
) -> tuple[dict, Any]:
    scores = (
        {"eval_loss": eval_loss(model, split, collator, cfg.eval.batch_size)} if split is not None else {}
    )
    gen = generate_answers(
        model,
        tokenizer,
        records,
        max_new_tokens=cfg.eval.max_new_tokens,
        batch_size=cfg.eval.batch_size,
        stop_token_ids=end_of_turn_token_ids(tokenizer),
    )
    scores.update(gen.scores())
    return scores, gen


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
    # The tokenizer saved with the model: proves it carries the training chat template.
    tokenizer = AutoTokenizer.from_pretrained(model.path)
    split = tokenized.splits.get(cfg.eval.split)
    records = dataset.splits.get(cfg.eval.split, [])[: cfg.eval.max_samples]
    collator = DataCollator(
        pad_token_id=tokenizer.pad_token_id, packed=split is not None and split.position_ids is not None
    )
    base = load_model(cfg.model, cfg.base_dir, vocab_size=len(tokenizer))
    base_scores: dict[str, float] = {}
    if cfg.eval.compare_base:
        base_scores, _ = _score(base, tokenizer, split, records, cfg, collator)
    tuned = load_finetuned(model.path, base)
    tuned_scores, gen = _score(tuned, tokenizer, split, records, cfg, collator)
    metrics = compare(base_scores, tuned_scores)
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
        "base": base_scores,
        "finetuned": tuned_scores,
        "num_generated": len(gen.predictions),
        "samples": samples[:5],
    }
