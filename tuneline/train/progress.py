"""Training progress as one updating line, attached to the Trainer as a callback:

    train  120/400 [30%] loss 1.234 eval 1.402 lr 1.9e-3 1,850 tok/s ETA 1m12s

It replaces the Trainer's own printer (a raw dict per log event; removed in
`tuneline.train.trainers.build_trainer`) and transformers' per-checkpoint "Writing model
shards" bars (`quiet_library_progress`). Only the main process prints.
"""

from __future__ import annotations

import math
from typing import Any, TextIO

from transformers import TrainerCallback

from tuneline.report.progress import ProgressLine, quiet_library_progress


def _sci(x: float) -> str:
    """1.9e-3 rather than 0.0019 or 1.9e-03: learning rates read best as mantissa and exponent."""
    if x == 0 or not math.isfinite(x):
        return f"{x:g}"
    mantissa, exponent = f"{x:.1e}".split("e")
    return f"{mantissa}e{int(exponent)}"


class TrainProgress(TrainerCallback):
    """Step count, latest train and eval loss, learning rate, tokens/s and ETA on one line.

    Tokens per second are the real (non-padding) tokens counted by the run's StepProbe, times the
    number of processes (each rank sees its own share of the batch). Reading the probe's count
    waits for the device, so it is read only when the line is about to be written (at most once
    a second on a terminal, every 10% in a log file), never per step.
    """

    def __init__(
        self,
        probe: Any = None,
        label: str = "train",
        stream: TextIO | None = None,
        tty: bool | None = None,
        every: float = 0.1,
        min_interval: float = 1.0,
    ):
        quiet_library_progress()
        self.probe = probe
        self.label = label
        self.stream, self.tty, self.every, self.min_interval = stream, tty, every, min_interval
        self.line: ProgressLine | None = None
        self.loss: float | None = None
        self.eval_loss: float | None = None
        self.lr: float | None = None
        self.world = 1

    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if not state.is_world_process_zero:
            return
        self.world = max(int(getattr(args, "world_size", 1) or 1), 1)
        self.line = ProgressLine(
            self.label,
            state.max_steps,
            initial=state.global_step,
            every=self.every,
            min_interval=self.min_interval,
            stream=self.stream,
            tty=self.tty,
        )

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kw: Any) -> None:
        logs = logs or {}
        if isinstance(logs.get("loss"), (int, float)):
            self.loss = float(logs["loss"])
        if isinstance(logs.get("learning_rate"), (int, float)):
            self.lr = float(logs["learning_rate"])
        if isinstance(logs.get("eval_loss"), (int, float)):
            self.eval_loss = float(logs["eval_loss"])

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if self.line is not None and self.line.wants_update(state.global_step):
            self.line.update(state.global_step, self.detail())

    def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if self.line is not None:
            self.line.finish(self.detail(), done=state.global_step)
            self.line = None

    def detail(self) -> str:
        parts = []
        if self.loss is not None:
            parts.append(f"loss {self.loss:.3f}")
        if self.eval_loss is not None:
            parts.append(f"eval {self.eval_loss:.3f}")
        if self.lr is not None:
            parts.append(f"lr {_sci(self.lr)}")
        tps = self.tokens_per_second()
        if tps is not None:
            parts.append(f"{tps:,.0f} tok/s")
        return " ".join(parts)

    def tokens_per_second(self) -> float | None:
        if self.probe is None or self.line is None:
            return None
        elapsed = self.line.clock() - self.line.started
        real, _ = self.probe.token_totals()
        return real * self.world / elapsed if elapsed > 0 and real > 0 else None
