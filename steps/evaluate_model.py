"""Score the fine-tuned model against its base (and the registry champion) on held-out data."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from zenml import log_metadata, step
from zenml.types import HTMLString

from steps._caching import cache_policy
from steps._tracking import active_run, log_metrics, log_params, log_png
from tuneline.artifacts import ModelArtifact
from tuneline.config import EvalStage
from tuneline.data.records import RecordSet
from tuneline.evaluate.judge import disabled_report, evaluate_sft
from tuneline.evaluate.report import render_html, samples_table
from tuneline.report import eval_metrics_and_params, plots
from tuneline.tokenize import TokenizedDataset

log = logging.getLogger("tuneline")


def registry_client() -> Any:
    """The MLflow client of the run's tracker (where the register step registers), or None."""
    if active_run() is None:
        return None
    from mlflow import MlflowClient

    return MlflowClient()


def publish(report: dict, flat: dict[str, float], model_dir: str | None = None) -> HTMLString:
    """The report where people look: MLflow metrics (scores; interval bounds and p-values as
    `stats.eval.*` params), `eval/report.html` and the `eval/samples.json` table (compared across
    runs in MLflow's UI), the base-vs-fine-tuned bars as `plots/eval_metrics.png`, ZenML
    metadata; the HTML, with the bars and the training loss curves on top, goes to the dashboard
    as the step's `eval_report_html` output."""
    bars = plots.metric_bars(report) if report.get("enabled") else None
    figures = [("held-out scores, base vs fine-tuned", bars), ("training loss", _loss_curves(model_dir))]
    page = plots.embed_after_heading(render_html(report), plots.figures_html(figures))
    scores, details = eval_metrics_and_params(flat)
    log_metrics(scores)
    if details:
        log_params(details)
    log_png(bars, "plots/eval_metrics.png")
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


def _loss_curves(model_dir: str | None) -> bytes | None:
    """The trained model's loss curves, when it carries the recipe's log history."""
    from pathlib import Path

    from tuneline.train.recipe import SUMMARY_FILE, load_summary

    if not model_dir or not (Path(model_dir) / SUMMARY_FILE).is_file():
        return None
    return plots.loss_curves(load_summary(model_dir).get("log_history") or [])


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
    return report, publish(report, flat, model.path)
