"""Training stops on the first non-finite loss or gradient.

A NaN that is averaged away or silently skipped produces a model that looks trained and
is garbage; failing within one optimizer step, with the step in the message, keeps the
broken run out of the registry and tells the user where to look.
"""

from __future__ import annotations

import math

from tuneline.errors import UserError


class NonFiniteLossError(UserError):
    """Loss or gradient norm became NaN/Inf. Usually a too-high learning rate, fp16 overflow or bad data."""

    def __init__(self, step: int, what: str, value: float):
        self.step = step
        self.what = what
        self.value = value
        super().__init__(
            f"training diverged at step {step}: {what} is {value} (non-finite). "
            "Lower train.learning_rate, keep train.max_grad_norm set, use train.precision=bf16/fp32 instead "
            "of fp16, or check the data around this step; the run was stopped and nothing was exported."
        )


def is_finite(value: float) -> bool:
    return math.isfinite(float(value))
