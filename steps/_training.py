"""What the two train steps share: run identity, its checkpoint directory and the durable copy."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
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


def checkpoint_key(cfg: ProjectConfig, identity: dict[str, str]) -> str:
    """The run's checkpoint directory name: project and method for people, then a digest of the
    run identity (config hash, data, base model), so a rerun of the same config after a crash
    finds its own checkpoints and a different config (another lr, another seed of a sweep)
    never reads, resumes or deletes them."""
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]
    return f"{cfg.name}--{cfg.train.method}--{digest}".replace("/", "_")


def checkpoint_dirs(
    cfg: ProjectConfig,
    identity: dict[str, str],
    store_path: str | None = None,
    store_is_local: bool = True,
) -> tuple[str, str | None]:
    """(local dir the trainer writes, durable dir in the artifact store or None if that is local).

    The store defaults to the active ZenML stack's artifact store (its path and flavour).
    """
    if store_path is None:
        from zenml.client import Client

        store = Client().active_stack.artifact_store
        store_path, store_is_local = store.path, store.flavor == "local"
    key = checkpoint_key(cfg, identity)
    durable = os.path.join(store_path, "checkpoints", key)
    local = durable if store_is_local else os.path.join(tempfile.gettempdir(), "tuneline-checkpoints", key)
    _note_other_runs(local, key)
    return (local, None) if store_is_local else (local, durable)


def _note_other_runs(local: str, key: str) -> None:
    """Unfinished checkpoints of this project's other configs are left alone; say where they are."""
    prefix = key.rsplit("--", 1)[0] + "--"
    parent = os.path.dirname(local)
    others = (
        sorted(d for d in os.listdir(parent) if d.startswith(prefix) and d != key)
        if os.path.isdir(parent)
        else []
    )
    if others:
        log.info(
            "checkpoints of %d other unfinished run(s) of this project kept in %s: %s (delete any you abandoned)",
            len(others),
            parent,
            ", ".join(others),
        )


# ---------------------------------------------------------------------------- durable copy
#
# On a non-local artifact store the trainer writes checkpoints to a local directory and each
# committed one is copied to the store (`sync_checkpoint`), so a run restarted on another
# machine can continue. A remote copy counts only when complete: its manifest.json (copied
# last) is there and every file it lists has the recorded size. Remote paths go through
# zenml.io.fileio, which speaks every artifact store flavour.


def _remote_checkpoints(durable: str) -> list[tuple[int, str]]:
    """(step, path) of the checkpoint directories in the store, newest first."""
    from zenml.io import fileio

    from tuneline.train import checkpoints as ckpts

    found = []
    for name in fileio.listdir(durable) if fileio.exists(durable) else []:
        step = ckpts.checkpoint_step(Path(str(name)))
        if step is not None:
            found.append((step, os.path.join(durable, str(name))))
    return sorted(found, reverse=True)


def _remote_complete(path: str) -> bool:
    from zenml.io import fileio

    from tuneline.train import checkpoints as ckpts

    manifest = os.path.join(path, ckpts.MANIFEST)
    if not fileio.exists(manifest):
        return False
    try:
        with fileio.open(manifest, "r") as f:
            files = json.loads(f.read())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    for rel, meta in files.items():
        remote = os.path.join(path, rel)
        if not fileio.exists(remote):
            return False
        size = fileio.size(remote)
        if size is not None and size != meta.get("size"):
            return False
    return bool(files)


def _upload(src: Path, dest: str) -> None:
    """Copy a committed checkpoint, its manifest last: a copy cut short is never complete."""
    from zenml.io import fileio

    from tuneline.train import checkpoints as ckpts

    if fileio.exists(dest):
        fileio.rmtree(dest)  # a partial copy of the same step from a killed upload
    files = sorted((p for p in src.rglob("*") if p.is_file()), key=lambda p: p.name == ckpts.MANIFEST)
    for p in files:
        target = os.path.join(dest, p.relative_to(src).as_posix())
        fileio.makedirs(os.path.dirname(target))
        fileio.copy(str(p), target, overwrite=True)


def rotate_durable(durable: str, keep: int) -> list[str]:
    """Keep the `keep` newest complete copies in the store, like the local rotation. The newest
    complete copy always stays; incomplete ones newer than it are left for the upload of
    their step to replace."""
    from zenml.io import fileio

    remote = _remote_checkpoints(durable)
    complete = [(s, p) for s, p in remote if _remote_complete(p)]
    if not complete:
        return []
    kept = {p for _, p in complete[: max(keep, 1)]}
    newest = complete[0][0]
    removed = [p for s, p in remote if p not in kept and s < newest]
    for p in removed:
        fileio.rmtree(p)
    return removed


def sync_checkpoint(path: str, local: str, durable: str | None, keep: int) -> None:
    """Copy a committed checkpoint to the store, then rotate the store's copies."""
    if not durable:
        return
    _upload(Path(path), os.path.join(durable, os.path.relpath(path, local)))
    rotate_durable(durable, keep)


def discard_durable(durable: str | None) -> None:
    """train.resume=never: the store's copies of this run would otherwise win on the next restart."""
    if durable:
        from zenml.io import fileio

        if fileio.exists(durable):
            fileio.rmtree(durable)


def restore_from_durable(local: str, durable: str | None) -> str | None:
    """Before training: make the newest verified checkpoint of local and store available
    locally, so the trainer resumes from it. A stale local directory (an older machine's, or
    one whose newest checkpoint is corrupt) no longer hides a newer copy in the store; a local
    checkpoint at least as new as the store's is used without downloading anything.

    Returns the path of the checkpoint brought in from the store, or None.
    """
    if not durable:
        return None
    from zenml.utils import io_utils

    from tuneline.train import checkpoints as ckpts

    candidates = [(s, 1, p) for s, p in _remote_checkpoints(durable)]
    candidates += [(ckpts.checkpoint_step(p) or 0, 2, str(p)) for p in ckpts.list_checkpoints(local)]
    for step, where, path in sorted(candidates, reverse=True):  # newest first, local before remote
        if where == 2:
            if ckpts.verify(Path(path)).ok:
                return None
            continue
        if not _remote_complete(path):
            log.warning("skipping incomplete copy %s in the artifact store", path)
            continue
        staged = Path(local) / ckpts.STAGING / f"download-{os.path.basename(path)}-{os.getpid()}"
        shutil.rmtree(staged, ignore_errors=True)
        io_utils.copy_dir(path, str(staged), overwrite=True)
        verdict = ckpts.verify(staged)
        if not verdict.ok:
            log.warning("skipping %s from the artifact store: %s", path, verdict.reason)
            shutil.rmtree(staged, ignore_errors=True)
            continue
        final = Path(local) / os.path.basename(path)
        if final.exists():
            ckpts.quarantine(final, "failed verification; replaced by the artifact store's copy")
        os.replace(staged, final)
        log.info("restored checkpoint step %d from %s", step, path)
        return str(final)
    return None


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


def log_training_metrics(metrics: dict[str, float], step: int) -> None:
    """The recipe's `log_metrics`: curves under `training/`, run scores as metrics, one-off
    figures as `stats.train.*` params (see `tuneline.report.keys`)."""
    from steps._tracking import log_metrics, log_params
    from tuneline.report import training_metrics_and_params

    curves, params = training_metrics_and_params(metrics)
    log_metrics(curves, step=step)
    if params:
        log_params(params)


def log_loss_curves(output_dir: str) -> None:
    """plots/loss.png: train and eval loss from the log history the recipe saved with the model."""
    from steps._tracking import active_run, log_png
    from tuneline.report import plots
    from tuneline.train.recipe import SUMMARY_FILE, load_summary

    if active_run() is None or not (Path(output_dir) / SUMMARY_FILE).is_file():
        return
    log_png(plots.loss_curves(load_summary(output_dir).get("log_history") or []), "plots/loss.png")


def run_training(cfg: ProjectConfig, data: Any, chat_template: str, fingerprints: dict[str, str]) -> Any:
    """The body both train steps share: tokenizer, durable checkpoints, in-process or multi-process.

    Returns the ModelArtifact. With `train.resources.accelerate` the standalone training
    core runs under accelerate/torchrun in worker processes (ZenML's run_with_accelerate
    cannot pass artifact inputs such as a TokenizedDataset to them).
    """
    from zenml import log_metadata

    from steps._tracking import log_params
    from tuneline.artifacts import ModelArtifact
    from tuneline.report import stats_params
    from tuneline.tokenize import prepare_tokenizer
    from tuneline.train import train
    from tuneline.train.loading import load_tokenizer

    log_params(cfg.model_dump(mode="json", exclude={"eval", "registry", "tracking"}))
    tokenizer = prepare_tokenizer(load_tokenizer(cfg.model, cfg.base_dir), cfg.template, cfg.base_dir)
    tokenizer.chat_template = chat_template
    identity = run_identity(cfg, fingerprints)  # with a pinned models:/ URI, never a temp path
    local, durable = checkpoint_dirs(cfg, identity)
    if cfg.train.resume == "never":
        discard_durable(durable)
    else:
        restore_from_durable(local, durable)
    kwargs = dict(
        output_dir=tempfile.mkdtemp(prefix="tuneline-model-"),
        checkpoint_dir=local,
        run_identity=identity,
        log_metrics=log_training_metrics,
        on_checkpoint=lambda path: sync_checkpoint(path, local, durable, cfg.train.save_total_limit),
    )
    start_cfg = local_reference_model(cfg)
    if cfg.train.resources.accelerate:
        from tuneline.train.distributed import train_distributed

        result = train_distributed(start_cfg, tokenizer, data, **kwargs)
    else:
        result = train(start_cfg, tokenizer, data, **kwargs)
    finish_checkpoints(local, durable)
    metrics = {k: v for k, v in result.metrics.items() if isinstance(v, (int, float))}
    log_params(stats_params("train", {"resumed": result.resumed_from is not None}))
    log_loss_curves(result.output_dir)
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
