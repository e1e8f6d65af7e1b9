"""Which figures MLflow shows as charts and which as one-off facts.

MLflow draws one chart per metric. Logged as metrics, a tiny run's record counts, tokenization
statistics and confidence bounds made 134 charts, almost all of them single points, and the
run page opened on bar charts of `base_eval_loss_ci_high` while the loss curves sat below.
So:

- curves (every Trainer log event: loss, grad_norm, learning_rate, eval_loss, TRL's
  rewards/...) are metrics under `training/`. The run page groups metrics by their prefix and
  puts prefixed sections first, so the training curves open the page;
- scores compared across runs stay plain metrics: the run's train_loss, tokens_per_second,
  peak_memory_mb, train_runtime, best_eval_loss, and per eval metric base_, finetuned_, delta_
  (and vs_champion_delta_);
- one-off facts become params under `stats.` (record counts, token statistics, trainable
  parameters, global step, resume, interval bounds, p-values, the registered version): searchable
  in the runs table, one row each on the run page, no chart.

The core keeps its own names (`train()`'s `log_metrics` callback, the eval report): this
mapping applies only where figures leave for MLflow.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

CURVE_SECTION = "training/"
STATS_PREFIX = "stats."

# Trainer log keys that are bookkeeping, not curves (per-phase timings, the x axis, FLOPs).
_NOT_CURVES = {"epoch", "total_flos"}
_NOT_CURVE_SUFFIXES = ("_runtime", "_per_second")
# Run-level figures people compare across runs; every other final figure is a one-off fact.
RUN_SCORES = {"train_loss", "tokens_per_second", "peak_memory_mb", "train_runtime", "best_eval_loss"}
# Marks the recipe's one final call (tuneline.train.recipe._run_metrics) among the log events.
_FINAL_MARKER = "trainable_params"
_EVAL_DETAIL_SUFFIXES = ("_ci_low", "_ci_high", "_p_value", "_significant")


def param_value(value: Any) -> str:
    """Short, exact enough to read and compare: 6 significant digits, ints without a point."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        if math.isfinite(value) and value == int(value) and abs(value) < 1e15:
            return str(int(value))
        return f"{value:.6g}"
    return str(value)


def stats_params(section: str, stats: Mapping[str, Any]) -> dict[str, str]:
    """{`stats.<section>.<key>`: value} for the numbers and flags in `stats` (nested dicts flattened)."""
    out: dict[str, str] = {}
    for k, v in stats.items():
        if isinstance(v, Mapping):
            out.update(stats_params(f"{section}.{k}", v))
        elif isinstance(v, (bool, int, float)):
            out[f"{STATS_PREFIX}{section}.{k}"] = param_value(v)
    return out


def training_metrics_and_params(metrics: Mapping[str, Any]) -> tuple[dict[str, float], dict[str, str]]:
    """One `log_metrics` call of the training recipe -> (MLflow metrics, MLflow params).

    A Trainer log event (or the non-finite guard's value) becomes `training/<key>` curve points;
    the Trainer's end-of-training event contributes `train_loss`. The recipe's final call
    (recognised by its `trainable_params`) gives the run scores as metrics, the rest as
    `stats.train.*` params.
    """
    numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if _FINAL_MARKER in numbers:
        scores = {k: float(v) for k, v in numbers.items() if k in RUN_SCORES}
        facts = {k: v for k, v in numbers.items() if k not in RUN_SCORES}
        return scores, stats_params("train", facts)
    out: dict[str, float] = {}
    for k, v in numbers.items():
        if k in RUN_SCORES:  # the Trainer's end-of-training average, not a point of the curve
            if k == "train_loss":
                out[k] = float(v)
            continue
        if k in _NOT_CURVES or k.endswith(_NOT_CURVE_SUFFIXES):
            continue
        out[CURVE_SECTION + k] = float(v)
    return out, {}


def eval_metrics_and_params(flat: Mapping[str, float]) -> tuple[dict[str, float], dict[str, str]]:
    """The evaluation's flat figures -> (base_/finetuned_/delta_ scores as metrics, their interval
    bounds, p-values and significance flags as `stats.eval.*` params)."""
    metrics: dict[str, float] = {}
    params: dict[str, str] = {}
    for k, v in flat.items():
        if k.endswith(_EVAL_DETAIL_SUFFIXES):
            value: Any = bool(v) if k.endswith("_significant") else v
            params[f"{STATS_PREFIX}eval.{k}"] = param_value(value)
        else:
            metrics[k] = v
    return metrics, params
