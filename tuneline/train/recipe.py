"""The training recipe: one `train()` for every method, zenml- and mlflow-free.

setup (resume decision, model, callbacks, trainer) -> train -> save. The pieces live next
door: `models` (what is trained), `trainers` (how), `callbacks` (metrics, the non-finite
guard, early stopping, durable checkpoints), `checkpoints` (the on-disk protocol).

Distributed runs (accelerate/torchrun DDP) call `train()` on every rank; only rank 0
writes checkpoints, manifests, metrics and the final artifact.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import resource
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuneline.config import ProjectConfig
from tuneline.errors import DataError, UserError
from tuneline.tokenize.tokenized import TokenizedDataset
from tuneline.train import checkpoints as ckpts
from tuneline.train.loading import resolve_precision
from tuneline.train.models import BuiltModel, build_model, count_parameters

if TYPE_CHECKING:
    from tuneline.data.records import RecordSet

logger = logging.getLogger(__name__)

LogMetrics = Callable[[dict[str, float], int], None]
SUMMARY_FILE = "tuneline_train.json"
SFT_METHODS = ("lora", "qlora", "full", "cpt")


@dataclass
class TrainResult:
    output_dir: str
    method: str
    global_step: int
    metrics: dict[str, float] = field(default_factory=dict)
    resumed_from: str | None = None


def train(
    cfg: ProjectConfig,
    tokenizer: Any,
    data: TokenizedDataset | RecordSet,
    *,
    output_dir: str,
    checkpoint_dir: str,
    run_identity: dict[str, Any],
    log_metrics: LogMetrics | None = None,
    on_checkpoint: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train `cfg.train.method` on `data`, resuming from the newest verified checkpoint.

    Raises UserError subclasses for anything the user can fix: a method/data mismatch,
    qlora without CUDA, a resume whose run identity changed (ResumeMismatchError) and a
    diverging run (NonFiniteLossError, after logging the non-finite value).
    """
    import torch
    from accelerate import PartialState
    from transformers import set_seed

    # Imported here: they pull in transformers' Trainer, and `import tuneline.train` stays cheap.
    from tuneline.train.callbacks import StepProbe, run_callbacks, stopped_early
    from tuneline.train.trainers import build_trainer

    tcfg = cfg.train
    _check_data(cfg, data)
    precision = resolve_precision(tcfg.precision)
    state = PartialState()
    ckpt_root = Path(checkpoint_dir)
    resume_from = _resume_decision(state, ckpt_root, run_identity, tcfg.resume)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()

    # setup
    set_seed(tcfg.seed)  # model init (LoRA A matrices, dropout) must be identical on resume and on every rank
    built = build_model(cfg, tokenizer, precision)
    probe = StepProbe()
    has_eval = bool(len(data.splits.get("validation") or []))
    callbacks, best = run_callbacks(
        cfg, probe, log_metrics, on_checkpoint, ckpt_root, run_identity, resume_from, precision, has_eval
    )
    staging = ckpt_root / ckpts.STAGING
    trainer = build_trainer(cfg, tokenizer, data, built, precision, staging, callbacks, probe)
    trainable, total = count_parameters(trainer.model)

    # train
    t0 = time.perf_counter()
    out = trainer.train(resume_from_checkpoint=resume_from)
    runtime = time.perf_counter() - t0
    restored = bool(
        best and stopped_early(trainer) and best.restore(trainer.accelerator.unwrap_model(trainer.model))
    )
    metrics = {"train_loss": float(out.training_loss)} if out.training_loss is not None else {}
    if trainer.eval_dataset is not None:
        ev = trainer.evaluate()  # final eval (also logged through the callback)
        metrics.update({k: float(v) for k, v in ev.items() if isinstance(v, (int, float))})
    final = _run_metrics(trainer, probe, runtime, trainable, total, early_stopping=best is not None)
    metrics.update(final)
    if log_metrics is not None and trainer.is_world_process_zero():
        log_metrics(final, trainer.state.global_step)

    # save
    if trainer.is_world_process_zero():
        _write_output(
            cfg, trainer, tokenizer, data, built, output_dir, metrics, run_identity, resume_from, restored
        )
        if tcfg.merge_adapter and tcfg.uses_lora:
            from tuneline.export import merge_lora

            base = built.base_model_cfg or cfg.model
            merge_lora(output_dir, base, str(Path(output_dir) / "merged"), base_dir=cfg.base_dir)
    if tcfg.merge_adapter and not tcfg.uses_lora:
        logger.warning("train.merge_adapter ignored: method %s already saves full weights", tcfg.method)
    state.wait_for_everyone()
    return TrainResult(output_dir, tcfg.method, trainer.state.global_step, metrics, resume_from)


def _run_metrics(
    trainer: Any, probe: Any, runtime: float, trainable: int, total: int, early_stopping: bool
) -> dict[str, float]:
    """Size, memory and throughput of the run (token counts summed over ranks)."""
    import torch

    real, processed = probe.token_totals()
    if trainer.accelerator.num_processes > 1:
        tokens = torch.tensor([real, processed], dtype=torch.float64, device=trainer.args.device)
        real, processed = trainer.accelerator.reduce(tokens, reduction="sum").tolist()
    final = {
        "trainable_params": float(trainable),
        "total_params": float(total),
        "trainable_fraction": trainable / total if total else 0.0,
        "peak_memory_mb": _peak_memory_mb(),
        "tokens_per_second": real / runtime if runtime > 0 else 0.0,
        "padding_efficiency": real / processed if processed else 1.0,
        "train_runtime": runtime,
        "global_step": float(trainer.state.global_step),
    }
    state = trainer.state
    if early_stopping and state.best_metric is not None and state.best_global_step:
        final["best_eval_loss"] = float(state.best_metric)
        final["best_step"] = float(state.best_global_step)
    return final


def _resume_decision(state: Any, ckpt_root: Path, run_identity: dict[str, Any], resume: str) -> str | None:
    """Rank 0 decides where to resume (and quarantines bad checkpoints); every rank follows,
    including into the same UserError."""
    from accelerate.utils import broadcast_object_list

    decision: list[Any] = [None]
    if state.is_main_process:
        try:
            found = ckpts.prepare_resume(ckpt_root, run_identity, resume)
            decision = [str(found.path) if found else None]
        except UserError as e:
            decision = [e]
    if state.num_processes > 1:
        broadcast_object_list(decision, from_process=0)
    if isinstance(decision[0], BaseException):
        raise decision[0]
    if decision[0]:
        logger.info("resuming from verified checkpoint %s", decision[0])
    return decision[0]


def _check_data(cfg: ProjectConfig, data: Any) -> None:
    method = cfg.train.method
    if cfg.train.is_preference:
        # Duck-typed (RecordSet): the training core must not import the data-loading stack.
        kind = getattr(data, "kind", None)
        if isinstance(data, TokenizedDataset) or kind != "preference" or not data.splits.get("train"):
            raise DataError(
                f"train.method={method} needs preference records (prompt messages + chosen/rejected) in a "
                f"non-empty 'train' split; got {type(data).__name__}" + (f" of kind '{kind}'" if kind else "")
            )
        return
    if not isinstance(data, TokenizedDataset) or not len(data.splits.get("train") or []):
        raise DataError(
            f"train.method={method} needs a TokenizedDataset with a non-empty 'train' split; "
            f"got {type(data).__name__}"
        )
    if data.splits["train"].num_supervised == 0:
        raise DataError("the train split has no supervised tokens (every label is -100); nothing to learn")


def _peak_memory_mb() -> float:
    """GPU: peak allocated by torch. CPU: the process's peak resident set (includes Python)."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _write_output(
    cfg: ProjectConfig,
    trainer: Any,
    tokenizer: Any,
    data: Any,
    built: BuiltModel,
    output_dir: str,
    metrics: dict[str, float],
    run_identity: dict[str, Any],
    resumed_from: str | None,
    restored_best: bool,
) -> None:
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = trainer.accelerator.unwrap_model(trainer.model)
    if hasattr(model, "peft_config"):
        if "ref" in model.peft_config:
            model.delete_adapter("ref")  # TRL's frozen copy of a continued adapter is not the artifact
        # New token rows are in the adapter as trainable tokens; PEFT would also copy the whole
        # (resized) embedding and output head into it, which a loader regrows anyway.
        model.save_pretrained(str(out), save_embedding_layers=False)
    else:
        trainer.save_model(str(out))
        (out / "training_args.bin").unlink(missing_ok=True)  # a pickle; outputs are safetensors/json only

    tok = tokenizer
    template = getattr(data, "chat_template", None)
    if template and tokenizer.chat_template != template:
        tok = copy.deepcopy(tokenizer)
        tok.chat_template = template  # the ids were rendered with this one; ship it with the weights
    tok.save_pretrained(str(out))

    base = built.base_model_cfg or cfg.model
    summary = {
        "method": cfg.train.method,
        "adapter": cfg.train.uses_lora,
        "base_model": base.model_dump(mode="json"),
        "start_adapter": built.start_adapter,
        "lora": cfg.train.lora.model_dump(mode="json") if cfg.train.uses_lora else None,
        "trained_token_rows": built.new_token_ids,
        "precision": resolve_precision(cfg.train.precision),
        "global_step": trainer.state.global_step,
        "resumed_from": resumed_from,
        "restored_best_eval_weights": restored_best,
        "run_identity": run_identity,
        "metrics": metrics,
        "log_history": trainer.state.log_history,
    }
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=1, default=_json_default))


def _json_default(o: Any) -> Any:
    if hasattr(o, "__dataclass_fields__"):
        return asdict(o)
    return str(o)


def load_summary(output_dir: str | os.PathLike[str]) -> dict[str, Any]:
    return json.loads((Path(output_dir) / SUMMARY_FILE).read_text())
