"""Decide whether this run trains: skip when the data is what the champion was trained on."""

from __future__ import annotations

import logging
from typing import Annotated

from zenml import log_metadata, step

from steps._caching import cache_policy
from steps._tracking import active_run, log_params
from tuneline.data.records import RecordSet
from tuneline.evaluate.standalone import RUN_TYPE_TAG
from tuneline.retrain import (
    CHAMPION_TAG,
    DECISION_REASON_TAG,
    DECISION_TAG,
    SKIPPED_RUN_TYPE,
    decide,
)

log = logging.getLogger("tuneline")


@step(enable_cache=False, cache_policy=cache_policy(__name__))
def decide_retrain(dataset: RecordSet, model_name: str, alias: str) -> Annotated[dict, "retrain_decision"]:
    """Never cached: the champion can move between two runs on the same data. The decision is
    recorded on the run's MLflow run (a skipped run is tagged `tuneline.run_type=skipped`, so
    it is told apart from training runs in the experiment) and on the ZenML run."""
    from mlflow import MlflowClient

    decision = decide(MlflowClient(), model_name, alias, dataset.fingerprints)
    log.info("%s", decision.summary_line())
    if active_run() is not None:
        import mlflow

        tags = {DECISION_TAG: "train" if decision.train else "skipped", DECISION_REASON_TAG: decision.reason}
        if decision.champion_version:
            tags[CHAMPION_TAG] = decision.champion_version
        if not decision.train:
            tags[RUN_TYPE_TAG] = SKIPPED_RUN_TYPE
        mlflow.set_tags(tags)
        log_params({f"data.fingerprint.{k}": v for k, v in decision.fingerprints.items()})
    log_metadata(metadata={"retrain": decision.as_dict()}, infer_artifact=True)
    return decision.as_dict()
