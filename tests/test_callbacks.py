"""Early stopping decided from fixed eval-loss sequences: no training, so no float rounding.

The real callbacks (transformers' EarlyStoppingCallback as `EarlyStopping`, our `BestWeights`)
get `on_evaluate` calls with given losses, and the Trainer's own best-metric bookkeeping
(`Trainer._determine_best_metric`, which runs right after `on_evaluate`) is applied in
between, as in `Trainer._maybe_log_save_evaluate`. A one-weight model holds the step number,
so the restored weights name the step they came from.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from transformers import Trainer, TrainerControl, TrainerState, TrainingArguments

from tuneline.train.callbacks import BEST_WEIGHTS, BestWeights, EarlyStopping

NAN = math.nan


def _args(tmp_path):
    return TrainingArguments(
        output_dir=str(tmp_path / "staging"),
        eval_strategy="steps",
        eval_steps=1,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        report_to="none",
        use_cpu=True,
    )


class _Run:
    """One training run as the callbacks see it: evaluations at steps 1, 2, 3, ..."""

    def __init__(self, args, patience: int, resume_from=None, state=None, counter: int = 0):
        self.args = args
        self.state = state or TrainerState()
        self.control = TrainerControl()
        self.model = torch.nn.Linear(1, 1, bias=False)
        self.stop = EarlyStopping(early_stopping_patience=patience)
        self.stop.early_stopping_patience_counter = counter
        self.best = BestWeights(resume_from)
        self.stop.on_train_begin(args, self.state, self.control)
        self._set_weight(self.state.global_step)
        self.best.on_train_begin(args, self.state, self.control, model=self.model)

    def _set_weight(self, step: int) -> None:
        with torch.no_grad():
            self.model.weight.fill_(float(step))

    def evaluate(self, step: int, loss: float) -> bool:
        self.state.global_step = step
        self._set_weight(step)
        metrics = {"eval_loss": loss}
        for cb in (self.stop, self.best):
            cb.on_evaluate(self.args, self.state, self.control, metrics=metrics, model=self.model)
        Trainer._determine_best_metric(SimpleNamespace(args=self.args, state=self.state), metrics, None)
        return self.control.should_training_stop

    def feed(self, losses: list[float], first_step: int = 1) -> int | None:
        for step, loss in enumerate(losses, first_step):
            if self.evaluate(step, loss):
                return step
        return None

    def restored_step(self) -> int:
        model = torch.nn.Linear(1, 1, bias=False)
        assert self.best.restore(model)
        return int(model.weight.item())


@pytest.mark.parametrize(
    ("losses", "patience", "stop_at", "best_at"),
    [
        ([3.0, 2.0, 2.5, 2.1, 1.0], 2, 4, 2),  # two evaluations without a lower loss
        ([2.0, 2.0, 2.0], 2, 3, 1),  # an equal loss is no improvement
        ([3.0, 4.0, 2.0, 5.0, 6.0], 2, 5, 3),  # an improvement resets the count
        ([2.0, NAN, NAN], 2, 3, 1),  # NaN never improves
        ([5.0, 4.0, 3.0, 2.0], 1, None, 4),  # always improving: runs to the end
        ([1.0, 2.0], 1, 2, 1),
    ],
)
def test_stops_at_the_right_evaluation_and_keeps_the_best(tmp_path, losses, patience, stop_at, best_at):
    run = _Run(_args(tmp_path), patience)
    assert run.feed(losses) == stop_at
    assert run.state.best_global_step == best_at
    assert run.state.best_metric == losses[best_at - 1]
    assert run.restored_step() == best_at, "the restored weights are those of the best evaluation"


@pytest.mark.parametrize("cut", [1, 2, 3])
def test_checkpointed_state_gives_the_uninterrupted_decision(tmp_path, cut):
    """What a checkpoint keeps (TrainerState, the callback's exported state, the best-weights
    file) rebuilds callbacks that decide exactly as the uninterrupted run does."""
    losses, patience = [3.0, 2.0, 2.6, 2.5, 2.4, 2.3], 4
    whole = _Run(_args(tmp_path), patience)
    assert whole.feed(losses) == 6 and whole.restored_step() == 2

    first = _Run(_args(tmp_path), patience)
    assert first.feed(losses[:cut]) is None
    ckpt = tmp_path / f"checkpoint-{cut}"
    ckpt.mkdir()
    first.best.write(ckpt, cut)  # what DurableCheckpoints calls before the manifest
    assert (ckpt / BEST_WEIGHTS).is_file() == (first.state.best_global_step != cut)
    first.state.save_to_json(str(ckpt / "trainer_state.json"))
    exported = first.stop.state()

    # As Trainer._load_callback_state rebuilds it: the class with its args, then its attributes.
    state = TrainerState.load_from_json(str(ckpt / "trainer_state.json"))
    resumed = _Run(
        _args(tmp_path),
        exported["args"]["early_stopping_patience"],
        resume_from=str(ckpt),
        state=state,
        counter=exported["attributes"]["early_stopping_patience_counter"],
    )
    assert resumed.feed(losses[cut:], first_step=cut + 1) == 6
    assert resumed.state.best_global_step == 2 and resumed.restored_step() == 2


def test_no_snapshot_without_an_evaluation(tmp_path):
    run = _Run(_args(tmp_path), 2)
    assert not run.best.restore(torch.nn.Linear(1, 1, bias=False))
