"""What `run.py` checks before an openai-backend run exists: the data converts, the price fits
the budget, and a key is available, so each mistake exits 2 with nothing uploaded or logged."""

from __future__ import annotations

import logging
import os
from typing import Any

from tuneline.openai_backend.convert import convert_records
from tuneline.openai_backend.cost import CostEstimate, check_budget, estimate_cost

log = logging.getLogger("tuneline")


def preflight_openai(cfg: Any, records: Any) -> CostEstimate:
    from tuneline.openai_backend.client import MissingKeyError

    oa = cfg.train.openai
    files = convert_records(records.splits, cfg.tokenize.train_on, validation_split=cfg.eval.split)
    estimate = estimate_cost(
        files.train, str(cfg.model.name_or_path), oa.n_epochs, price_override=oa.price_per_million_tokens
    )
    log.info("openai fine-tuning cost estimate: %s", estimate.describe())
    check_budget(estimate, oa.max_cost_usd)
    if not os.environ.get(oa.api_key_env, "").strip() and not oa.secret_name:
        raise MissingKeyError(
            f"train.openai: no API key: export {oa.api_key_env}=... or set train.openai.secret_name to a "
            "ZenML secret holding it (key api_key)"
        )
    return estimate


def dry_run_openai(cfg: Any, records: Any, fingerprints: dict[str, str]) -> str:
    """The plan of an openai-backend run, with the price it would pay."""
    from tuneline.home import mlflow_tracking_uri, redact_uri, tuneline_home

    oa = cfg.train.openai
    files = convert_records(records.splits, cfg.tokenize.train_on, validation_split=cfg.eval.split)
    estimate = estimate_cost(
        files.train, str(cfg.model.name_or_path), oa.n_epochs, price_override=oa.price_per_million_tokens
    )
    budget = f" (limit ${oa.max_cost_usd:.2f})" if oa.max_cost_usd is not None else ""
    return "\n".join(
        [
            "plan (dry run: nothing was uploaded, trained, logged or registered)",
            f"  backend:    openai fine-tuning API at {oa.base_url or os.environ.get('OPENAI_BASE_URL') or 'api.openai.com'}",
            f"  model:      {cfg.model.name_or_path}  epochs={oa.n_epochs} batch={oa.batch_size} "
            f"lr_multiplier={oa.learning_rate_multiplier} suffix={oa.suffix or '-'}",
            f"  data:       {', '.join(f'{k}={v}' for k, v in files.counts.items())} examples "
            f"(train_on={cfg.tokenize.train_on}, data fingerprint {fingerprints['data']})",
            f"  cost:       {estimate.describe()}{budget}",
            "  steps:      load_dataset -> convert_for_openai -> train_openai -> evaluate_openai -> "
            "register_openai_model",
            f"  registry:   {cfg.registry.model_name} (promote to @{cfg.registry.alias} on {cfg.registry.metric})",
            f"  MLflow:     {redact_uri(mlflow_tracking_uri(cfg.tracking.mlflow_tracking_uri))}",
            f"  state:      {tuneline_home()}",
        ]
    )
