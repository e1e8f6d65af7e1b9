"""Log the model to MLflow, register a new version, and promote it if it beats the champion."""

from __future__ import annotations

import logging
from typing import Annotated

from zenml import get_step_context, step

from steps._tracking import active_run, log_metrics
from tuneline.artifacts import ModelArtifact
from tuneline.config import ProjectConfig
from tuneline.data.records import RecordSet
from tuneline.errors import TunelineError
from tuneline.tracking import champion_score, decide_promotion, register_version, registration_refusal

log = logging.getLogger("tuneline")


def _describe_sources(sources: list) -> str:
    """`path@sha256[:12]` per file, `hub:name[split]@revision` per hub dataset: readable lineage."""
    parts = []
    for src in sources:
        if not isinstance(src, dict):
            parts.append(str(src))
        elif src.get("files"):
            parts += [f"{f.get('path')}@{str(f.get('sha256', ''))[:12]}" for f in src["files"]]
        elif src.get("type") == "hub" or src.get("hub"):
            parts.append(
                f"hub:{src.get('hub') or src.get('name')}[{src.get('split')}]@{src.get('revision') or 'unpinned'}"
            )
        else:
            parts.append(str(src.get("key") or src.get("type")))
    return ", ".join(parts)[:4000] or "unknown"


@step
def register_model(
    model: ModelArtifact,
    eval_report: dict,
    dataset: RecordSet,
    config: dict,
) -> Annotated[dict, "registration"]:
    import mlflow
    from mlflow import MlflowClient

    cfg = ProjectConfig.model_validate(config)
    reg = cfg.registry
    tuned = (eval_report.get("finetuned") or {}) if eval_report.get("enabled") else {}
    base = eval_report.get("base") or {}
    score = tuned.get(reg.metric)
    refusal = registration_refusal(reg, tuned, base, evaluated=bool(eval_report.get("enabled")))
    if refusal:
        log.warning("not registering: %s", refusal)
        return {"registered": False, "reason": refusal}
    run = active_run()
    if run is None:
        raise TunelineError("registering needs an MLflow run: use a stack with an MLflow experiment tracker")
    mlflow.log_artifacts(model.path, artifact_path="model")
    client = MlflowClient()
    champion, champion_version = champion_score(client, reg.model_name, reg.alias, reg.metric)
    tags = {f"metric.{k}": f"{v:.6g}" for k, v in tuned.items()}
    tags.update({f"data.fingerprint.{k}": v for k, v in dataset.fingerprints.items()})
    tags.update({f"data.records.{k}": str(len(v)) for k, v in dataset.splits.items()})
    tags.update(
        {
            "data.sources": _describe_sources(dataset.info.get("sources", [])),
            "method": model.method,
            "base_model": model.base_model,
            "zenml.pipeline_run": get_step_context().pipeline_run.name,
        }
    )
    version = register_version(
        client,
        model_name=reg.model_name,
        source=mlflow.get_artifact_uri("model"),
        run_id=run.info.run_id,
        tags=tags,
        description=f"{model.method} fine-tune of {model.base_model}",
    )
    decision = decide_promotion(
        score, champion, greater_is_better=reg.greater_is_better, champion_version=champion_version
    )
    if champion_version is not None:
        champ_fp = client.get_model_version(reg.model_name, champion_version).tags.get(
            f"data.fingerprint.{cfg.eval.split}"
        )
        comparable = champ_fp == dataset.fingerprints.get(cfg.eval.split)
        client.set_model_version_tag(reg.model_name, version.version, "promotion.comparable", str(comparable))
        if not comparable:
            decision.reason += (
                f" (note: champion v{champion_version} was scored on a different {cfg.eval.split} set)"
            )
    promoted = bool(reg.promote and decision.promoted)
    if promoted:
        client.set_registered_model_alias(reg.model_name, reg.alias, version.version)
    log_metrics({"registered_version": float(version.version), "promoted": float(promoted)})
    log.info(
        "registered %s version %s; %s: %s",
        reg.model_name,
        version.version,
        "promoted" if promoted else "not promoted",
        decision.reason,
    )
    return {
        "registered": True,
        "model_name": reg.model_name,
        "version": str(version.version),
        "alias": reg.alias,
        "promoted": promoted,
        "reason": decision.reason if reg.promote else "registry.promote is false",
        "champion_version": champion_version,
        "run_id": run.info.run_id,
        "model_uri": f"models:/{reg.model_name}/{version.version}",
    }
