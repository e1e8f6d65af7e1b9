"""Train through the OpenAI fine-tuning API: price the job, stop over budget, then start (or
re-attach to) the job and stream its per-step metrics into the MLflow run."""

from __future__ import annotations

import logging
from typing import Annotated

from zenml import step

from steps._caching import cache_policy
from steps._openai import api_client
from steps._tracking import active_run, log_metrics, log_params
from tuneline.config import TrainStage
from tuneline.home import tuneline_home

log = logging.getLogger("tuneline")


@step(cache_policy=cache_policy(__name__))
def train_openai(openai_files: dict, config: TrainStage) -> Annotated[dict, "openai_model"]:
    from tuneline.openai_backend.cost import check_budget, estimate_cost
    from tuneline.openai_backend.jobs import JobSpec, run_job

    cfg = config.project()
    oa = cfg.train.openai
    base_model = str(cfg.model.name_or_path)
    estimate = estimate_cost(
        openai_files["train"], base_model, oa.n_epochs, price_override=oa.price_per_million_tokens
    )
    log.info("openai fine-tuning cost: %s", estimate.describe())
    log_params(estimate.params())
    check_budget(estimate, oa.max_cost_usd)
    spec = JobSpec(
        model=base_model,
        n_epochs=oa.n_epochs,
        batch_size=oa.batch_size,
        learning_rate_multiplier=oa.learning_rate_multiplier,
        suffix=oa.suffix,
        seed=oa.seed if oa.seed is not None else cfg.train.seed,
    )
    log_params(
        {
            "openai.base_model": base_model,
            "openai.n_epochs": oa.n_epochs,
            "openai.batch_size": oa.batch_size,
            "openai.learning_rate_multiplier": oa.learning_rate_multiplier,
            "openai.suffix": oa.suffix or "",
            "openai.seed": spec.seed,
        }
    )

    def on_job(job: object, resumed: bool) -> None:
        if active_run() is not None:
            import mlflow

            mlflow.set_tags({"openai.job_id": job.id, "openai.job_resumed": str(resumed).lower()})  # type: ignore[attr-defined]

    result = run_job(
        api_client(oa),
        {"train": openai_files["train"], "validation": openai_files.get("validation")},
        spec,
        state_dir=tuneline_home(),
        on_metrics=lambda s, m: log_metrics(m, step=s),
        on_job=on_job,
        poll_interval_s=oa.poll_interval_s,
        timeout_s=oa.timeout_s,
    )
    log_params(
        {
            "openai.fine_tuned_model": result.fine_tuned_model,
            **{f"openai.hp.{k}": v for k, v in result.hyperparameters.items()},
        }
    )
    if result.trained_tokens is not None:
        log_metrics({"openai_trained_tokens": result.trained_tokens})
    log.info("openai fine-tuned model: %s (job %s)", result.fine_tuned_model, result.job_id)
    return result.as_dict()
