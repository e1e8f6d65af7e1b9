"""Prune a sweep trial from inside training: eval loss -> `trial.report`, `should_prune` -> stop.

The trainer runs inside the train step, which must not learn about the sweep through its
inputs: its cache key would then differ from a plain run of the same config, and neither the
final run with the best values nor a resumed trial could reuse a finished training. So the
sweep hands the trial over out of band: `TUNELINE_SWEEP_TRIAL` (storage URL, study, trial id,
pruner) in the environment, or `reporting_to(trial)` in this process. Outside a sweep neither
is set and no callback is added.

A pruned trial raises `TrialPrunedError` rather than ending training quietly: a model cut
short must never be stored as the step's output, where a later run of the same config would
be served it from the cache. The step records why in the trial first (`PRUNED_ATTR`), so the
sweep tells a pruned trial from a failed one.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from transformers import TrainerCallback

from tuneline.errors import TunelineError

logger = logging.getLogger(__name__)

ENV = "TUNELINE_SWEEP_TRIAL"
PRUNED_ATTR = "tuneline.pruned"
INTERMEDIATE = "eval_loss"

_local: tuple[Any, bool] | None = None


class TrialPrunedError(TunelineError):
    """Raised inside training when the pruner stops a trial; not a failure of the run."""

    def __init__(self, number: int, step: int, eval_loss: float):
        self.number, self.step, self.eval_loss = number, step, eval_loss
        super().__init__(
            f"sweep trial {number} pruned at step {step}: eval_loss {eval_loss:.4f} is worse than the "
            "pruner allows against the earlier trials at this step"
        )


def build_pruner(spec: dict[str, Any]) -> Any:
    """The Optuna pruner of a sweep file's `pruner:` section (as a dict, so the step process can
    rebuild it from the environment)."""
    import optuna

    kind = spec.get("type", "median")
    if kind == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=int(spec.get("startup_trials", 1)),
            n_warmup_steps=int(spec.get("warmup_steps", 0)),
        )
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=max(1, int(spec.get("warmup_steps", 0))),
            reduction_factor=int(spec.get("reduction_factor", 3)),
        )
    return optuna.pruners.NopPruner()


class TrialPruning(TrainerCallback):
    """Reports each evaluation's eval loss to the trial (negated when the study maximizes, so the
    pruner compares in the study's direction) and stops a trial the pruner gives up on. The final
    evaluation after the last step is reported, never pruned: nothing is left to save."""

    def __init__(self, trial: Any, maximize: bool = False):
        self.trial = trial
        self.maximize = maximize
        self.reported: set[int] = set()
        self._warned = False

    def on_evaluate(
        self, args: Any, state: Any, control: Any, metrics: dict | None = None, **kw: Any
    ) -> None:
        loss = (metrics or {}).get(INTERMEDIATE)
        step = state.global_step
        if loss is None or step in self.reported:
            return
        if getattr(args, "world_size", 1) > 1:
            # Stopping one rank would leave the others waiting in the next all-reduce.
            if not self._warned:
                logger.warning("sweep pruning is off for multi-process training")
                self._warned = True
            return
        self.reported.add(step)
        loss = float(loss)
        self.trial.report(-loss if self.maximize else loss, step)
        if state.max_steps and step >= state.max_steps:
            return
        if self.trial.should_prune():
            self.trial.set_user_attr(PRUNED_ATTR, {"step": step, "eval_loss": loss})
            raise TrialPrunedError(self.trial.number, step, loss)


def trial_spec(storage: str, study: str, trial_id: int, number: int, pruner: dict, maximize: bool) -> str:
    """The `TUNELINE_SWEEP_TRIAL` value for one trial."""
    return json.dumps(
        {
            "storage": storage,
            "study": study,
            "trial_id": trial_id,
            "number": number,
            "pruner": pruner,
            "maximize": maximize,
        }
    )


def trial_pruning() -> TrialPruning | None:
    """The callback for the trial this process trains for, or None outside a sweep."""
    if _local is not None:
        return TrialPruning(*_local)
    raw = os.environ.get(ENV)
    if not raw:
        return None
    import optuna

    spec = json.loads(raw)
    study = optuna.load_study(
        study_name=spec["study"], storage=spec["storage"], pruner=build_pruner(spec["pruner"])
    )
    return TrialPruning(optuna.trial.Trial(study, int(spec["trial_id"])), bool(spec["maximize"]))


@contextmanager
def reporting_to(trial: Any, maximize: bool = False) -> Iterator[None]:
    """Training in this process reports to `trial` (any storage, in-memory included)."""
    global _local
    previous, _local = _local, (trial, maximize)
    try:
        yield
    finally:
        _local = previous
