"""The side concerns of a run, attached to the HF/TRL Trainer as `TrainerCallback`s.

- `ForwardMetrics`: every Trainer log event to `log_metrics` (numbers only, NaN included).
- `NonFiniteGuard`: a non-finite loss or gradient stops the run within the optimizer step
  it happens in, with the value logged first, on every rank at once.
- `EarlyStopping` (transformers' `EarlyStoppingCallback`) decides when to stop; its patience
  counter is checkpointed by the Trainer (`restore_callback_states_from_checkpoint`), and the
  best score with `TrainerState.best_metric`.
- `BestWeights` keeps the trainable weights of the best evaluation and puts them into every
  checkpoint, so a resumed run can still hand back the weights from before it overfit.
- `DurableCheckpoints` commits each checkpoint the Trainer wrote into staging: manifest,
  atomic rename, rotation, `on_checkpoint`.
- `TrainProgress` (`tuneline.train.progress`) prints one updating progress line.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers import EarlyStoppingCallback, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from tuneline.sweep.pruning import trial_pruning
from tuneline.train import checkpoints as ckpts
from tuneline.train.guards import NonFiniteLossError
from tuneline.train.progress import TrainProgress

if TYPE_CHECKING:
    from tuneline.train.recipe import LogMetrics

logger = logging.getLogger(__name__)
BEST_WEIGHTS = "tuneline_best_weights.safetensors"


def _wait_for_everyone() -> None:
    from accelerate import PartialState

    PartialState().wait_for_everyone()


class ForwardMetrics(TrainerCallback):
    """Trainer log events -> log_metrics, numbers only, NaN included (rank 0)."""

    def __init__(self, log_metrics: LogMetrics | None):
        self.log_metrics = log_metrics

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kw: Any) -> None:
        if not state.is_world_process_zero or self.log_metrics is None or not logs:
            return
        numeric = {k: float(v) for k, v in logs.items() if isinstance(v, (int, float)) and k != "total_flos"}
        if numeric:
            self.log_metrics(numeric, state.global_step)


class StepProbe:
    """What each micro-step saw, kept on the device so that recording it never waits for the
    accelerator: the first non-finite loss since the last check, and the tokens processed.
    Filled by the trainer's `training_step` (see `tuneline.train.trainers`)."""

    def __init__(self) -> None:
        self.bad: Any = None  # bool tensor: some loss since the last check was non-finite
        self.bad_value: Any = None  # the first such loss
        self.real_tokens: Any = 0  # int or device tensor: attention-mask tokens
        self.processed_tokens = 0  # shapes only: known on the host

    def count_tokens(self, inputs: dict[str, Any]) -> None:
        """SFT batches have `input_ids`; ORPO batches have `chosen_input_ids` and
        `rejected_input_ids` (each already prefixed with the prompt, so `prompt_input_ids` is not
        counted again). Packed batches have no attention_mask; their collator states the real
        tokens instead (`REAL_TOKENS_KEY`, removed here so the model never sees it)."""
        from tuneline.tokenize.collate import REAL_TOKENS_KEY

        real = inputs.pop(REAL_TOKENS_KEY, None)
        if real is not None:
            self.processed_tokens += int(inputs["input_ids"].numel())
            self.real_tokens = self.real_tokens + int(real)
            return
        keys = [k for k in inputs if k.endswith("input_ids") and hasattr(inputs[k], "numel")]
        if any(k.startswith(("chosen_", "rejected_")) for k in keys):
            keys = [k for k in keys if k != "prompt_input_ids"]
        for key in keys:
            ids = inputs[key]
            self.processed_tokens += int(ids.numel())
            mask = inputs.get(key[: -len("input_ids")] + "attention_mask")
            self.real_tokens = self.real_tokens + (mask.sum() if mask is not None else int(ids.numel()))

    def observe_loss(self, loss: Any) -> None:
        import torch

        loss = loss.detach().float().mean()
        finite = torch.isfinite(loss)
        if self.bad is None:
            self.bad, self.bad_value = ~finite, loss
            return
        self.bad_value = torch.where(self.bad | finite, self.bad_value, loss)
        self.bad = self.bad | ~finite

    def take_loss(self) -> tuple[Any, Any]:
        """(non-finite flag, first non-finite loss) since the last call, as device tensors."""
        bad, value = self.bad, self.bad_value
        self.bad = self.bad_value = None
        return bad, value

    def token_totals(self) -> tuple[float, float]:
        return float(self.real_tokens), float(self.processed_tokens)


class NonFiniteGuard(TrainerCallback):
    """Stop before the optimizer applies a step whose loss or gradient is NaN/Inf.

    Checked once per optimizer step (one host sync, not one per micro-step), after the
    gradients are all-reduced and clipped. transformers hands no callback the norm it clipped
    with, so the norm is taken again here; clipping by a NaN/Inf norm leaves NaN in the
    gradients, so a non-finite gradient anywhere still shows (logged as NaN). Gradients that
    are all finite but whose norm overflows float range are clipped to a zero step, not
    flagged. Under fp16 AMP an inf gradient is the GradScaler's overflow signal (it skips the step and
    lowers the scale), so only the loss is checked there. On several ranks the flags are
    summed across ranks first: every rank raises at the same step, or the healthy ones
    would hang in the next all-reduce.
    """

    def __init__(self, probe: StepProbe, log_metrics: LogMetrics | None, check_grads: bool):
        self.probe = probe
        self.log_metrics = log_metrics
        self.check_grads = check_grads

    def on_pre_optimizer_step(
        self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any
    ) -> None:
        import torch
        from accelerate import PartialState

        bad_loss, loss_value = self.probe.take_loss()
        zero = torch.zeros((), device=args.device)
        grad_norm = zero
        if self.check_grads and model is not None:
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            if grads:
                norm = torch.nn.utils.get_total_norm(grads)
                if hasattr(norm, "full_tensor"):  # sharded (DTensor) gradients: the global norm
                    norm = norm.full_tensor()
                grad_norm = norm.float().to(args.device)
        if bad_loss is None:
            loss_flag = loss_value = zero
        else:
            loss_flag, loss_value = bad_loss.float().to(args.device), torch.where(bad_loss, loss_value, zero)
        stats = torch.stack(
            [loss_flag, loss_value.to(args.device), (~torch.isfinite(grad_norm)).float(), grad_norm]
        )
        if PartialState().num_processes > 1:
            from accelerate.utils import reduce

            stats = reduce(stats, reduction="sum")  # NaN/Inf survive the sum
        bad_loss_n, loss_val, bad_grad_n, norm = stats.tolist()
        if bad_loss_n:
            self._fail(state, "loss", loss_val)
        if bad_grad_n:
            self._fail(state, "grad_norm", norm)

    def _fail(self, state: Any, what: str, value: float) -> None:
        step = state.global_step + 1  # the step being taken
        if state.is_world_process_zero and self.log_metrics is not None:
            self.log_metrics({what: value}, step)  # recorded, never filtered, before stopping
        raise NonFiniteLossError(step, what, value)


class EarlyStopping(EarlyStoppingCallback):
    """transformers' EarlyStoppingCallback, decision and checkpointed state unchanged.

    Only its start-up check differs: the library warns unless `load_best_model_at_end` is set,
    which would look for the best checkpoint under the Trainer's output_dir. Ours are moved
    out of there when committed, and `BestWeights` hands back the best weights instead.
    """

    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if args.metric_for_best_model is None or args.eval_strategy == "no":
            raise ValueError("early stopping needs metric_for_best_model and an eval strategy")


def stopped_early(trainer: Any) -> bool:
    """Whether the early-stopping decision ended the run. Looked up in the trainer: resuming
    replaces the callback instance with one rebuilt from the checkpoint."""
    for cb in trainer.callback_handler.callbacks:
        if isinstance(cb, EarlyStoppingCallback):
            return cb.early_stopping_patience_counter >= cb.early_stopping_patience
    return False


def _is_better(args: Any, state: Any, value: float) -> bool:
    """The Trainer's own rule for a new `state.best_metric` (Trainer._determine_best_metric)."""
    if args.greater_is_better:
        return value > (state.best_metric if state.best_metric is not None else -math.inf)
    return value < (state.best_metric if state.best_metric is not None else math.inf)


class BestWeights(TrainerCallback):
    """The trainable weights as they were at the best evaluation.

    The snapshot holds trainable tensors only (tiny for adapters, one CPU copy for full runs).
    It goes into each checkpoint as `BEST_WEIGHTS` unless the checkpoint's own weights are the
    best (then its model files already are), and a resumed run reads it back.
    """

    def __init__(self, resume_from: str | None):
        self.resume_from = resume_from
        self.snapshot: dict[str, Any] | None = None
        self.step: int | None = None

    @staticmethod
    def _trainable(model: Any) -> dict[str, Any]:
        return {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad}

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
        if not self.resume_from or state.best_global_step is None or model is None:
            return
        saved = Path(self.resume_from) / BEST_WEIGHTS
        if saved.is_file():
            from safetensors.torch import load_file

            self.snapshot, self.step = load_file(str(saved)), state.best_global_step
        elif state.best_global_step == state.global_step:
            self.snapshot, self.step = self._trainable(model), state.best_global_step  # just loaded

    def on_evaluate(
        self, args: Any, state: Any, control: Any, metrics: dict | None = None, model: Any = None, **kw: Any
    ) -> None:
        name = args.metric_for_best_model or ""
        value = (metrics or {}).get(name if name.startswith("eval_") else f"eval_{name}")
        if value is None or model is None:
            return
        if _is_better(args, state, float(value)):
            self.snapshot, self.step = self._trainable(model), state.global_step

    def write(self, checkpoint: Path, step: int) -> None:
        """Put the snapshot into a staged checkpoint (before its manifest is written)."""
        if self.snapshot is not None and self.step != step:
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in self.snapshot.items()}, str(checkpoint / BEST_WEIGHTS))

    def restore(self, model: Any) -> bool:
        if self.snapshot is None:
            return False
        import torch

        params = dict(model.named_parameters())
        missing = set(self.snapshot) - set(params)
        if missing:
            raise RuntimeError(
                f"best-weights snapshot names parameters the model lacks: {sorted(missing)[:5]}"
            )
        with torch.no_grad():
            for n, v in self.snapshot.items():
                params[n].copy_(v.to(params[n].device))
        return True


class DurableCheckpoints(TrainerCallback):
    """Commit each checkpoint the Trainer staged: manifest with the run identity, atomic rename
    into the checkpoint directory, rotation that keeps the newest verified one, `on_checkpoint`.

    `on_save` runs on every rank after `Trainer._save_checkpoint`; the barrier waits for every
    rank's RNG file before rank 0 hashes the directory, the second one keeps the others from
    running ahead into a checkpoint that is still being moved.
    """

    def __init__(
        self,
        checkpoint_dir: Path,
        run_identity: dict[str, Any],
        keep: int,
        on_checkpoint: Callable[[str], None] | None,
        before_commit: Callable[[Path, int], None] | None = None,
    ):
        self.checkpoint_dir = checkpoint_dir
        self.run_identity = run_identity
        self.keep = keep
        self.on_checkpoint = on_checkpoint
        self.before_commit = before_commit

    def on_save(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        step = state.global_step
        _wait_for_everyone()
        if state.is_world_process_zero:
            staged = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{step}"
            final = self.checkpoint_dir / staged.name
            if self.before_commit is not None:
                self.before_commit(staged, step)
            position = {
                "global_step": step,
                "epoch": state.epoch,
                "samples_seen": step
                * args.per_device_train_batch_size
                * args.gradient_accumulation_steps
                * args.world_size,
            }
            ckpts.commit(staged, final, self.run_identity, {"data_position": position})
            ckpts.rotate(self.checkpoint_dir, self.keep, protect=final)
            if self.on_checkpoint is not None:
                self.on_checkpoint(str(final))
        _wait_for_everyone()


def run_callbacks(
    cfg: Any,
    probe: StepProbe,
    log_metrics: LogMetrics | None,
    on_checkpoint: Callable[[str], None] | None,
    checkpoint_dir: Path,
    run_identity: dict[str, Any],
    resume_from: str | None,
    precision: str,
    has_eval: bool,
) -> tuple[list[Any], BestWeights | None]:
    """The callbacks of one run, in the order they must see each event, and its BestWeights
    (None without early stopping). BestWeights runs before DurableCheckpoints commits, so its
    file is in the manifest."""
    patience = cfg.train.early_stopping_patience
    best = BestWeights(resume_from) if patience and has_eval else None
    if patience and not has_eval:
        logger.warning("train.early_stopping_patience ignored: there is no validation split to evaluate")
    callbacks: list[Any] = [
        ForwardMetrics(log_metrics),
        NonFiniteGuard(probe, log_metrics, check_grads=precision != "fp16"),
        TrainProgress(probe),  # one progress line instead of the Trainer's printed dicts
    ]
    if best is not None:
        callbacks += [EarlyStopping(early_stopping_patience=patience), best]
    pruning = trial_pruning()  # a sweep trial's pruner (tuneline.sweep.pruning), else None
    if pruning is not None:
        callbacks.append(pruning)
    durable = DurableCheckpoints(
        checkpoint_dir,
        run_identity,
        cfg.train.save_total_limit,
        on_checkpoint,
        before_commit=best.write if best is not None else None,
    )
    return [*callbacks, durable], best
