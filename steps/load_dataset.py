"""Load, validate, split and fingerprint the dataset described by `data:`."""

from __future__ import annotations

from typing import Annotated

from zenml import log_metadata, step

from materializers.record_set_materializer import RecordSetMaterializer
from steps._caching import cache_policy
from steps._tracking import active_run, log_params
from tuneline.config import DataConfig
from tuneline.data import load_records, render_summary_html, summarize
from tuneline.data.records import RecordSet
from tuneline.report import stats_params


@step(output_materializers=RecordSetMaterializer, cache_policy=cache_policy(__name__))
def load_dataset(
    data_config: DataConfig,
    base_dir: str,
    source_fingerprint: str,
    kind: str,
) -> Annotated[RecordSet, "dataset"]:
    """`source_fingerprint` is unused in the body: it is a parameter so that an edited
    file at an unchanged path changes the cache key and this step re-runs."""
    records = load_records(data_config, base_dir, kind=kind)
    fps = records.fingerprints
    counts = {f"data_{k}_records": len(v) for k, v in records.splits.items()}
    log_params({f"data.fingerprint.{k}": v for k, v in fps.items()})
    log_params({"data.source_fingerprint": source_fingerprint})
    # One-off counts are params (stats.data.<split>_records), not one-point metric charts.
    log_params(stats_params("data", {f"{k}_records": len(v) for k, v in records.splits.items()}))
    if active_run() is not None:
        import mlflow

        mlflow.log_text(render_summary_html(summarize(records)), "data/summary.html")
        mlflow.log_dict(records.info, "data/info.json")
    log_metadata(
        metadata={"fingerprints": fps, "source_fingerprint": source_fingerprint, **counts},
        infer_artifact=True,
    )
    return records
