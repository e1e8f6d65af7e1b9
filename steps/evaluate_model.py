"""Score the fine-tuned model against its base (and the registry champion) on held-out data."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from zenml import log_metadata, step
from zenml.types import HTMLString

from steps._caching import cache_policy
from steps._tracking import active_run, log_metrics
from tuneline.artifacts import ModelArtifact
from tuneline.config import EvalStage
from tuneline.data.records import RecordSet
from tuneline.evaluate.judge import disabled_report, evaluate_sft
from tuneline.evaluate.report import render_html, samples_table
from tuneline.tokenize import TokenizedDataset

log = logging.getLogger("tuneline")


def registry_client() -> Any:
    """The MLflow client of the run's tracker (where the register step registers), or None."""
    if active_run() is None:
        return None
    from mlflow import MlflowClient

    return MlflowClient()


def publish(report: dict, flat: dict[str, float]) -> HTMLString:
    """The report where people look: MLflow metrics, `eval/report.html` and the `eval/samples.json`
    table (compared across runs in MLflow's UI), ZenML metadata; the HTML goes to the dashboard
    as the step's `eval_report_html` output."""
    page = render_html(report)
    log_metrics(flat)
    if active_run() is not None:
        import mlflow

        mlflow.log_text(page, "eval/report.html")
        table = samples_table(report)
        if table:
            mlflow.log_table(table, artifact_file="eval/samples.json")
    if flat:
        log_metadata(metadata=flat, infer_artifact=True, artifact_name="eval_report")
    if not report.get("enabled"):
        log.warning("eval.enabled is false: this model will not be registered")
    return HTMLString(page)


@step(cache_policy=cache_policy(__name__))
def evaluate_model(
    model: ModelArtifact,
    tokenized: TokenizedDataset,
    dataset: RecordSet,
    config: EvalStage,
) -> tuple[Annotated[dict, "eval_report"], Annotated[HTMLString, "eval_report_html"]]:
    from transformers import AutoTokenizer

    cfg = config.project()
    if not cfg.eval.enabled:
        report = disabled_report()
        return report, publish(report, {})
    # The tokenizer saved with the model: this also proves it carries the training chat template.
    tokenizer = AutoTokenizer.from_pretrained(model.path)
    split = cfg.eval.split
    report, flat = evaluate_sft(
        cfg,
        model.path,
        tokenizer,
        tokenized.splits.get(split),
        dataset.splits.get(split, [])[: cfg.eval.max_samples],
        data_fingerprint=dataset.fingerprints.get(split, ""),
        client=registry_client(),
    )
    return report, publish(report, flat)
