"""Register the evaluated model once per weights, and let the registry's gate decide whether it
becomes `@champion` or `@challenger`.

The decision itself lives in `tuneline.registry` (testable against a real store without a
pipeline); this step only gathers what it needs from the run: the eval report's scores and
paired comparisons, the lineage, and the MLflow run the model is logged to.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Annotated, Any

from zenml import get_step_context, step

from pipelines.zenml_model import record_registration
from steps._caching import cache_policy
from steps._tracking import active_run, log_params
from tuneline.artifacts import ModelArtifact
from tuneline.config import PipelineConfig
from tuneline.data.records import RecordSet
from tuneline.errors import TunelineError
from tuneline.registry import Scored, Significance
from tuneline.report import stats_params
from tuneline.tracking import registration_refusal

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


def _eval_set(eval_report: dict, dataset: RecordSet, config: PipelineConfig) -> str:
    """The eval-set fingerprint the report's scores belong to. Reports always carry it; a report
    without one (written by an older evaluation) gets the same fingerprint evaluation computes."""
    if eval_report.get("eval_fingerprint"):
        return str(eval_report["eval_fingerprint"])
    from tuneline.evaluate.report import eval_set_fingerprint

    return eval_set_fingerprint(config, dataset.fingerprints.get(config.eval.split, ""))


def _significance(row: dict | None, against: str) -> Significance | None:
    if not row or row.get("significant") is None:
        return None
    return Significance(
        significant=bool(row["significant"]),
        against=against,
        p_value=row.get("p_value"),
        delta=row.get("delta"),
        ci_low=row.get("ci_low", row.get("delta_ci_low")),
        ci_high=row.get("ci_high", row.get("delta_ci_high")),
    )


def champion_inputs(eval_report: dict, metric: str, fp: str) -> tuple[Scored | None, Significance | None]:
    """(the champion re-scored on this eval set, the paired bootstrap of the candidate against the
    reference the gate will use) from the eval report. A champion only recorded on this set needs
    no re-score (the registry reads its tags) and has no paired comparison here; with no champion
    the reference is the base model."""
    champ = eval_report.get("champion") or {}
    status = champ.get("status")
    if status == "rescored" and champ.get("version") is not None:
        version = str(champ["version"])
        rescored = Scored(dict(champ.get("metrics") or {}), fp, version)
        return rescored, _significance((champ.get("comparison") or {}).get(metric), f"v{version}")
    if status == "recorded":
        return None, None
    return None, _significance((eval_report.get("metrics") or {}).get(metric), "base")


@dataclass
class Gated:
    """What both registration steps read before deciding: the scores, the run, the eval set."""

    tuned: dict
    base: dict
    run_id: str
    client: Any
    eval_fp: str


def gate_and_run(eval_report: dict, dataset: RecordSet, config: PipelineConfig) -> Gated | dict:
    """The registry's refusal (a `registration` dict: nothing is registered) or the inputs of a
    decision; a registration outside an MLflow run is an error, never a silent skip."""
    from mlflow import MlflowClient

    evaluated = bool(eval_report.get("enabled"))
    tuned = (eval_report.get("finetuned") or {}) if evaluated else {}
    base = eval_report.get("base") or {}
    refusal = registration_refusal(config.registry, tuned, base, evaluated=evaluated)
    if refusal:
        log.warning("not registering: %s", refusal)
        return {"registered": False, "reason": refusal}
    run = active_run()
    if run is None:
        raise TunelineError("registering needs an MLflow run: use a stack with an MLflow experiment tracker")
    return Gated(tuned, base, run.info.run_id, MlflowClient(), _eval_set(eval_report, dataset, config))


def registration_dict(result: Any, champion_alias: str, challenger_alias: str, run_id: str) -> dict:
    """The step's output: `RegistrationResult` plus the keys the run summary reads."""
    d = result.as_dict()
    d.update(
        {
            "registered": True,
            "alias": champion_alias if result.promoted else challenger_alias,
            "reason": result.decision.reason,
            "champion_version": result.champion,
            "run_id": run_id,
        }
    )
    return d


@step(cache_policy=cache_policy(__name__))
def register_model(
    model: ModelArtifact,
    eval_report: dict,
    dataset: RecordSet,
    config: PipelineConfig,
) -> Annotated[dict, "registration"]:
    import mlflow

    from tuneline.registry import (
        CONFIG_ARTIFACT,
        Aliases,
        Candidate,
        PromotionPolicy,
        find_version_by_weights,
        lineage_tags,
        loggable_config,
        register_and_decide,
        weights_sha256,
    )
    from tuneline.serve.mlflow_model import log_chat_model

    reg = config.registry
    gated = gate_and_run(eval_report, dataset, config)
    if isinstance(gated, dict):
        return gated
    tuned, base, run_id, client, fp = gated.tuned, gated.base, gated.run_id, gated.client, gated.eval_fp
    weights = weights_sha256(model.path)
    # The same weights (an eval-only change re-ran this step) reuse their version and its files.
    existing = find_version_by_weights(client, reg.model_name, weights)
    source = existing.source if existing is not None else log_chat_model(model.path, config)
    resolved = loggable_config(config.model_dump(mode="json"))
    mlflow.log_dict(resolved, CONFIG_ARTIFACT)
    pipeline_run = get_step_context().pipeline_run
    lineage = lineage_tags(
        config=resolved,
        mlflow_run_id=run_id,
        zenml_run_id=str(pipeline_run.id),
        zenml_run_name=pipeline_run.name,
        data_fingerprints=dataset.fingerprints,
        data_sources=_describe_sources(dataset.info.get("sources", [])),
        base_model=model.base_model or config.model.name_or_path,
        base_revision=config.model.revision,
        method=model.method,
        wall_time_s=model.metrics.get("train_runtime"),
        weights_sha256=weights,
    )
    lineage.update({f"data.records.{k}": str(len(v)) for k, v in dataset.splits.items()})
    policy = PromotionPolicy.from_config(reg)
    rescored, significance = champion_inputs(eval_report, policy.metric, fp)
    aliases = Aliases(reg.alias)
    result = register_and_decide(
        client,
        reg.model_name,
        Candidate(
            source=source,  # the MLflow pyfunc chat model (tuneline.serve.mlflow_model)
            run_id=run_id,
            weights_sha256=weights,
            scores=Scored(dict(tuned), fp),
            base=Scored(dict(base), fp) if base else None,
            lineage=lineage,
            description=f"{model.method} fine-tune of {model.base_model}",
        ),
        policy,
        registry_uri=mlflow.get_registry_uri(),
        aliases=aliases,
        champion_rescored=rescored,
        significance=significance,
        promote=reg.promote,
    )
    log_params(stats_params("registry", {"version": int(result.version), "promoted": bool(result.promoted)}))
    registration = registration_dict(result, aliases.champion, aliases.challenger, run_id)
    record_registration(registration)  # the run's ZenML model version mirrors the MLflow one
    return registration
