"""Supervised fine-tuning (lora / qlora / full) and continued pretraining."""

from __future__ import annotations

import logging
import tempfile
from typing import Annotated

from zenml import log_metadata, step

from steps._tracking import log_metrics, log_params
from steps._training import (
    checkpoint_dirs,
    finish_checkpoints,
    mlflow_logger,
    restore_from_durable,
    run_identity,
    sync_checkpoint,
)
from tuneline.artifacts import ModelArtifact
from tuneline.config import ProjectConfig
from tuneline.modeling import load_tokenizer
from tuneline.tokenization import prepare_tokenizer
from tuneline.tokenized import TokenizedDataset
from tuneline.training import train

log = logging.getLogger("tuneline")


@step
def train_model(
    tokenized: TokenizedDataset,
    chat_template: str,
    config: dict,
    data_fingerprint: str,
) -> Annotated[ModelArtifact, "model"]:
    cfg = ProjectConfig.model_validate(config)
    log_params(config)
    tokenizer = prepare_tokenizer(load_tokenizer(cfg.model, cfg.base_dir), cfg.template, cfg.base_dir)
    tokenizer.chat_template = chat_template
    local, durable = checkpoint_dirs(cfg)
    restore_from_durable(local, durable)
    out = tempfile.mkdtemp(prefix="tuneline-model-")
    result = train(
        cfg,
        tokenizer,
        tokenized,
        output_dir=out,
        checkpoint_dir=local,
        run_identity=run_identity(cfg, data_fingerprint),
        log_metrics=mlflow_logger(),
        on_checkpoint=lambda path: sync_checkpoint(path, local, durable),
    )
    finish_checkpoints(local, durable)
    log_metrics({"train_resumed": float(result.resumed_from is not None)})
    metrics = {k: v for k, v in result.metrics.items() if isinstance(v, (int, float))}
    log_metadata(
        metadata={"method": result.method, "global_step": result.global_step, **metrics}, infer_artifact=True
    )
    return ModelArtifact(
        path=result.output_dir,
        method=result.method,
        base_model=cfg.model.name_or_path or "from_config",
        metrics=metrics,
    )
