"""The ZenML side of the registry: a ZenML Model per registered model name, mirroring MLflow.

MLflow's registry decides (versions, `@champion`); ZenML shows each training run's model
version with its artifacts (dataset, tokenized data, model, eval report) in its dashboard and
`zenml model version list NAME`. Each training run gets a ZenML model version named after the
run; when the run registers MLflow version N, that version records `mlflow_version: N` (with the
model URI and the decision) and takes the name `N` if no earlier run's version holds it (the
same weights registered again reuse N, so a later run keeps its run name). The ZenML
`production` stage follows MLflow's `@champion`: after every registration and after a manual
`promote` / `rollback`, on the version that mirrors the champion.

Everything ZenML-specific lives here, outside `tuneline/`, which never imports ZenML.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("tuneline")

MLFLOW_VERSION_KEY = "mlflow_version"


def zenml_model(cfg: Any, run_name: str) -> Any:
    """The pipeline-level ZenML Model of a training run, or None when nothing is registered.

    The version is named after the run, so numeric names are left for MLflow version numbers.
    ZenML's own registry saving stays off: `register_model` is the only registry writer.
    """
    if not cfg.registry.enabled:
        return None
    from zenml import Model

    return Model(
        name=cfg.registry.model_name,
        version=run_name,
        description=(
            f"Mirror of the MLflow registered model '{cfg.registry.model_name}': one version per "
            "training run, named by its MLflow version once registered; production follows "
            f"@{cfg.registry.alias}."
        ),
        save_models_to_registry=False,
    )


def _versions(client: Any, model_name: str) -> list[Any]:
    from zenml.utils.pagination_utils import depaginate

    return depaginate(client.list_model_versions, model=model_name, sort_by="desc:number", hydrate=True)


def zenml_version_for(client: Any, model_name: str, mlflow_version: str) -> Any | None:
    """The ZenML version that mirrors MLflow version N: the one named N, else the newest one
    that recorded N (a run that registered the same weights again), else None."""
    try:
        return client.get_model_version(model_name, str(mlflow_version))
    except KeyError:
        pass
    for mv in _versions(client, model_name):
        if str(mv.run_metadata.get(MLFLOW_VERSION_KEY)) == str(mlflow_version):
            return mv
    return None


def sync_production_stage(model_name: str, champion_mlflow_version: str | None) -> str:
    """Put the ZenML version mirroring the champion in `production` (the one there before is
    archived); with no champion, or no mirror of it, nothing stays in production. Returns one
    line for people."""
    from zenml.client import Client
    from zenml.enums import ModelStages

    client = Client()
    try:
        model = client.get_model(model_name)
    except KeyError:
        return f"ZenML: no model '{model_name}' in this ZenML store; its production stage is not mirrored"
    target = (
        zenml_version_for(client, model_name, champion_mlflow_version) if champion_mlflow_version else None
    )
    in_production = [
        mv
        for mv in _versions(client, model_name)
        if mv.stage == ModelStages.PRODUCTION and (target is None or mv.id != target.id)
    ]
    if target is None:
        for mv in in_production:
            client.update_model_version(model.id, mv.id, stage=ModelStages.ARCHIVED, force=True)
        why = (
            f"no ZenML version of '{model_name}' mirrors MLflow v{champion_mlflow_version}"
            if champion_mlflow_version
            else f"'{model_name}' has no champion"
        )
        archived = f" (archived {', '.join(mv.name for mv in in_production)})" if in_production else ""
        return f"ZenML: {why}; nothing in production{archived}"
    if target.stage != ModelStages.PRODUCTION:
        client.update_model_version(model.id, target.id, stage=ModelStages.PRODUCTION, force=True)
    archived = f" (archived {', '.join(mv.name for mv in in_production)})" if in_production else ""
    return f"ZenML: '{model_name}' version {target.name} (MLflow v{champion_mlflow_version}) is in production{archived}"


def record_registration(registration: dict[str, Any]) -> None:
    """In the register step: record the MLflow version on this run's ZenML model version, name
    it after that version when the name is free, and move production to the champion."""
    from zenml import get_step_context
    from zenml.client import Client

    context = get_step_context()
    mv = context.model_version
    if mv is None:  # a pipeline run without a ZenML Model (e.g. launched by hand)
        return
    version = str(registration["version"])
    decision = registration.get("decision") or {}
    context.model.log_metadata(
        {
            MLFLOW_VERSION_KEY: version,
            "model_uri": str(registration.get("model_uri", "")),
            "mlflow_run_id": str(registration.get("run_id", "")),
            "decision": str(registration.get("alias", "")),
            "decision_reason": str(decision.get("reason", registration.get("reason", ""))),
            "promoted": bool(registration.get("promoted")),
        }
    )
    client = Client()
    if mv.name != version:
        try:
            holder = client.get_model_version(mv.model.id, version)
        except KeyError:
            holder = None
        if holder is None:
            client.update_model_version(mv.model.id, mv.id, name=version)
            log.info("ZenML model version %s of '%s' is now named %s", mv.name, mv.model.name, version)
    champion = registration.get("champion_version")
    log.info("%s", sync_production_stage(mv.model.name, str(champion) if champion else None))


def store_exists() -> bool:
    """Whether this TUNELINE_HOME has a ZenML store (a pipeline ran here); the registry commands
    work on MLflow alone and must not create one."""
    from tuneline.home import zenml_config_dir

    return (zenml_config_dir() / "config.yaml").is_file()
