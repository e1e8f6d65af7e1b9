"""Score the API fine-tuned model against its base (and the registry champion) on held-out data,
through chat completions, into the same report a local evaluation publishes."""

from __future__ import annotations

from typing import Annotated

from zenml import step
from zenml.types import HTMLString

from steps._caching import cache_policy
from steps._openai import api_client
from steps.evaluate_model import publish, registry_client
from tuneline.config import EvalStage
from tuneline.data.records import RecordSet


@step(cache_policy=cache_policy(__name__))
def evaluate_openai(
    openai_model: dict, dataset: RecordSet, config: EvalStage
) -> tuple[Annotated[dict, "eval_report"], Annotated[HTMLString, "eval_report_html"]]:
    from tuneline.evaluate.judge import disabled_report
    from tuneline.openai_backend.evaluate import evaluate_openai as evaluate

    cfg = config.project()
    if not cfg.eval.enabled:
        report = disabled_report()
        return report, publish(report, {})
    split = cfg.eval.split
    report, flat = evaluate(
        cfg,
        api_client(cfg.train.openai),
        openai_model["fine_tuned_model"],
        dataset.splits.get(split, [])[: cfg.eval.max_samples],
        data_fingerprint=dataset.fingerprints.get(split, ""),
        registry_client=registry_client(),
    )
    return report, publish(report, flat)
