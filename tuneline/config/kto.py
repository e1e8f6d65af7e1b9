"""Checks of the `train:` keys KTO reads, so none is ignored by another method and KTO never
runs in a setting where its loss is degenerate."""

from __future__ import annotations

from typing import Any


def check_kto(train: Any) -> None:
    """Raise ValueError (a config error naming the key) for a KTO misconfiguration."""
    p = train.preference
    weights = [k for k in ("desirable_weight", "undesirable_weight") if getattr(p, k) is not None]
    if train.method != "kto":
        if weights:
            raise ValueError(
                f"train.preference.{weights[0]} is only used by kto (it weighs labelled answers); "
                f"remove it for train.method={train.method}, or set train.method: kto"
            )
        return
    if train.batch_size < 2:
        # TRL estimates KTO's KL term from the other answers of the same micro-batch.
        raise ValueError(
            "train.batch_size must be at least 2 for kto: its KL reference point is estimated from the "
            "other answers in a batch (with 1 it equals the reward itself)"
        )
