"""Score a preference-tuned model against where it started: does it prefer the chosen answers?"""

from __future__ import annotations

from typing import Annotated

from zenml import step
from zenml.types import HTMLString

from steps._caching import cache_policy
from steps._training import local_reference_model
from steps.evaluate_model import publish, registry_client
from tuneline.artifacts import ModelArtifact
from tuneline.config import EvalStage
from tuneline.data.records import RecordSet
from tuneline.evaluate.judge import disabled_report, evaluate_preference


@step(cache_policy=cache_policy(__name__))
def evaluate_preferences(
    model: ModelArtifact,
    dataset: RecordSet,
    config: EvalStage,
) -> tuple[Annotated[dict, "eval_report"], Annotated[HTMLString, "eval_report_html"]]:
    from transformers import AutoTokenizer

    cfg = local_reference_model(config.project())
    if not cfg.eval.enabled:
        report = disabled_report()
        return report, publish(report, {})
    tokenizer = AutoTokenizer.from_pretrained(model.path)
    split = cfg.eval.split
    report, flat = evaluate_preference(
        cfg,
        model.path,
        tokenizer,
        dataset.splits.get(split, [])[: cfg.eval.max_samples],
        data_fingerprint=dataset.fingerprints.get(split, ""),
        client=registry_client(),
    )
    return report, publish(report, flat, model.path)
