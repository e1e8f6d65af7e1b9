"""Register an API fine-tuned model through the same gate as a local one (`register_model`):
one version per fine-tuned model id, `@champion` or `@challenger` by the registry's policy.

The version's source is an MLflow pyfunc that calls the API (`tuneline.openai_backend.pyfunc`);
the id of the fine-tuned model stands where a local model's weights hash stands.
"""

from __future__ import annotations

import logging
from typing import Annotated

from zenml import get_step_context, step

from pipelines.zenml_model import record_registration
from steps._caching import cache_policy
from steps._tracking import log_params
from steps.register_model import _describe_sources, champion_inputs, gate_and_run, registration_dict
from tuneline.config import PipelineConfig
from tuneline.data.records import RecordSet
from tuneline.report import stats_params

log = logging.getLogger("tuneline")


@step(cache_policy=cache_policy(__name__))
def register_openai_model(
    openai_model: dict, eval_report: dict, dataset: RecordSet, config: PipelineConfig
) -> Annotated[dict, "registration"]:
    import mlflow

    from tuneline.openai_backend.pyfunc import log_openai_model, model_identity, model_info
    from tuneline.registry import (
        CONFIG_ARTIFACT,
        Aliases,
        Candidate,
        PromotionPolicy,
        Scored,
        find_version_by_weights,
        lineage_tags,
        loggable_config,
        register_and_decide,
    )

    reg = config.registry
    gated = gate_and_run(eval_report, dataset, config)
    if isinstance(gated, dict):
        return gated
    tuned, base, run_id, client, fp = gated.tuned, gated.base, gated.run_id, gated.client, gated.eval_fp
    model_id = openai_model["fine_tuned_model"]
    identity = model_identity(model_id)
    existing = find_version_by_weights(client, reg.model_name, identity)
    oa = config.train.openai
    source = (
        existing.source
        if existing is not None
        else log_openai_model(
            model_info(
                model_id,
                base_model=openai_model["base_model"],
                job_id=openai_model["job_id"],
                base_url=oa.base_url,
                api_key_env=oa.api_key_env,
            )
        )
    )
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
        base_model=openai_model["base_model"],
        base_revision=None,
        method="openai",
        wall_time_s=None,
        weights_sha256=identity,
    )
    lineage.update({f"data.records.{k}": str(len(v)) for k, v in dataset.splits.items()})
    lineage.update({"openai.fine_tuned_model": model_id, "openai.job_id": openai_model["job_id"]})
    policy = PromotionPolicy.from_config(reg)
    rescored, significance = champion_inputs(eval_report, policy.metric, fp)
    aliases = Aliases(reg.alias)
    result = register_and_decide(
        client,
        reg.model_name,
        Candidate(
            source=source,
            run_id=run_id,
            weights_sha256=identity,
            scores=Scored(dict(tuned), fp),
            base=Scored(dict(base), fp) if base else None,
            lineage=lineage,
            description=f"OpenAI fine-tune of {openai_model['base_model']}: {model_id}",
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
    record_registration(registration)
    return registration
