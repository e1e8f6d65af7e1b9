"""Logging into the MLflow run that ZenML's experiment tracker opened for this step.

Steps run with the tracker enabled; if a user's stack has none, logging is skipped
with one warning instead of failing the run.
"""

from __future__ import annotations

import logging
from typing import Any

from tuneline.tracking import finite_metrics, safe_params

log = logging.getLogger("tuneline")


def active_run() -> Any:
    import mlflow

    run = mlflow.active_run()
    if run is None:
        log.warning("no active MLflow run (stack without an MLflow experiment tracker?); not logging")
    return run


def log_params(params: dict[str, Any], prefix: str = "") -> None:
    import mlflow

    if active_run() is None:
        return
    flat = safe_params(params)
    existing = mlflow.get_run(mlflow.active_run().info.run_id).data.params
    # MLflow refuses to change a logged param; a re-executed step logs the same values.
    new = {f"{prefix}{k}": v for k, v in flat.items() if f"{prefix}{k}" not in existing}
    if new:
        mlflow.log_params(new)


def log_metrics(metrics: dict[str, Any], step: int | None = None) -> None:
    import mlflow

    if active_run() is None:
        return
    clean = finite_metrics(metrics)
    if clean:
        mlflow.log_metrics(clean, step=step)


def log_png(png: bytes | None, artifact_file: str) -> None:
    """A plot (PNG bytes from `tuneline.report.plots`) as a run artifact, e.g. `plots/loss.png`."""
    import mlflow

    if png is None or active_run() is None:
        return
    import tempfile
    from pathlib import Path

    folder = Path(artifact_file).parent.as_posix()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(artifact_file).name
        path.write_bytes(png)
        mlflow.log_artifact(str(path), artifact_path=None if folder == "." else folder)
