"""What the two train steps share: the durable checkpoint location and run identity."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from typing import Any

from tuneline.config import ProjectConfig

log = logging.getLogger("tuneline")

# Knobs that change how a run is executed or observed, not what it computes: changing
# them must not block resuming a crashed run.
_NON_IDENTITY_TRAIN_KEYS = {
    "resume",
    "save_steps",
    "save_total_limit",
    "logging_steps",
    "resources",
    "merge_adapter",
}


def run_identity(cfg: ProjectConfig, fingerprints: dict[str, str]) -> dict[str, str]:
    train = {k: v for k, v in cfg.train.model_dump().items() if k not in _NON_IDENTITY_TRAIN_KEYS}
    ident = {
        "model": cfg.model.model_dump(),
        "template": cfg.template.model_dump(),
        "tokenize": cfg.tokenize.model_dump(),
        "train": train,
    }
    config_hash = hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:16]
    base = (
        cfg.model.name_or_path
        or "from_config:"
        + hashlib.sha256(json.dumps(cfg.model.from_config, sort_keys=True).encode()).hexdigest()[:12]
    )
    if cfg.model.revision:
        base += f"@{cfg.model.revision}"
    return {
        "config_hash": config_hash,
        "data_fingerprint": fingerprints["data"],
        "local_files_fingerprint": fingerprints["local_files"],
        "base_model": base,
    }


def checkpoint_dirs(cfg: ProjectConfig) -> tuple[str, str | None]:
    """(local dir the trainer writes, durable dir in the artifact store or None if that is local).

    Keyed by project name and method, not by config hash, so that a rerun after a
    crash finds its checkpoints and a changed config is detected and refused.
    """
    from zenml.client import Client

    store = Client().active_stack.artifact_store
    key = f"{cfg.name}--{cfg.train.method}".replace("/", "_")
    durable = os.path.join(store.path, "checkpoints", key)
    if store.flavor == "local":
        return durable, None
    local = os.path.join(tempfile.gettempdir(), "tuneline-checkpoints", key)
    return local, durable


def restore_from_durable(local: str, durable: str | None) -> None:
    from zenml.io import fileio
    from zenml.utils import io_utils

    if durable and fileio.exists(durable) and not os.path.exists(local):
        log.info("restoring checkpoints from %s", durable)
        io_utils.copy_dir(durable, local, overwrite=True)


def sync_checkpoint(path: str, local: str, durable: str | None) -> None:
    if not durable:
        return
    from zenml.utils import io_utils

    io_utils.copy_dir(path, os.path.join(durable, os.path.relpath(path, local)), overwrite=True)


def finish_checkpoints(local: str, durable: str | None) -> None:
    """A finished run's checkpoints are not resumable state any more: the model artifact is."""
    shutil.rmtree(local, ignore_errors=True)
    if durable:
        from zenml.io import fileio

        if fileio.exists(durable):
            fileio.rmtree(durable)


def local_reference_model(cfg: ProjectConfig) -> ProjectConfig:
    """A copy of cfg whose `models:/name/N` reference points at a local download of it."""
    ref = cfg.train.preference.reference_model
    if not ref or not ref.startswith("models:/"):
        return cfg
    from mlflow import MlflowClient

    from tuneline.home import tuneline_home
    from tuneline.tracking import download_model_version

    local = download_model_version(MlflowClient(), ref, str(tuneline_home() / "cache" / "models"))
    cfg = cfg.model_copy(deep=True)
    cfg.train.preference.reference_model = local
    return cfg


def run_training(cfg: ProjectConfig, data: Any, chat_template: str, fingerprints: dict[str, str]) -> Any:
    """The body both train steps share: tokenizer, durable checkpoints, in-process or multi-process.

    Returns the ModelArtifact. With `train.resources.accelerate` the standalone training
    core runs under accelerate/torchrun in worker processes (ZenML's run_with_accelerate
    cannot pass artifact inputs such as a TokenizedDataset to them).
    """
    from zenml import log_metadata

    from steps._tracking import log_metrics, log_params
    from tuneline.artifacts import ModelArtifact
    from tuneline.tokenize import prepare_tokenizer
    from tuneline.train import train
    from tuneline.train.loading import load_tokenizer

    log_params(cfg.model_dump(mode="json", exclude={"eval", "registry", "tracking"}))
    tokenizer = prepare_tokenizer(load_tokenizer(cfg.model, cfg.base_dir), cfg.template, cfg.base_dir)
    tokenizer.chat_template = chat_template
    identity = run_identity(cfg, fingerprints)  # with a pinned models:/ URI, never a temp path
    local, durable = checkpoint_dirs(cfg)
    restore_from_durable(local, durable)
    kwargs = dict(
        output_dir=tempfile.mkdtemp(prefix="tuneline-model-"),
        checkpoint_dir=local,
        run_identity=identity,
        log_metrics=lambda metrics, step: log_metrics(metrics, step=step),
        on_checkpoint=lambda path: sync_checkpoint(path, local, durable),
    )
    start_cfg = local_reference_model(cfg)
    if cfg.train.resources.accelerate:
        from tuneline.train.distributed import train_distributed

        result = train_distributed(start_cfg, tokenizer, data, **kwargs)
    else:
        result = train(start_cfg, tokenizer, data, **kwargs)
    finish_checkpoints(local, durable)
    metrics = {k: v for k, v in result.metrics.items() if isinstance(v, (int, float))}
    log_metrics({"train_resumed": float(result.resumed_from is not None)})
    log_metadata(
        metadata={"method": result.method, "global_step": result.global_step, **metrics}, infer_artifact=True
    )
    return ModelArtifact(
        path=result.output_dir,
        method=result.method,
        base_model=cfg.train.preference.reference_model or cfg.model.name_or_path or "from_config",
        metrics=metrics,
        scratch=True,
    )
