"""The search space as Optuna distributions, and a trial's values as `--set` overrides.

A trial's config is `load_config(config, base_overrides + trial_overrides)`: validated by the
same code as a command line's `--set`, so a trial can never run a config `run.py` would refuse.
"""

from __future__ import annotations

from typing import Any

from tuneline.config import ProjectConfig, load_config
from tuneline.sweep.schema import Param, Sweep, override


def distributions(params: list[Param]) -> dict[str, Any]:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out: dict[str, Any] = {}
    for p in params:
        if p.kind == "choice":
            out[p.key] = CategoricalDistribution(list(p.choices))
        elif p.kind == "int":
            out[p.key] = IntDistribution(int(p.low), int(p.high), log=p.log)  # type: ignore[arg-type]
        else:
            out[p.key] = FloatDistribution(float(p.low), float(p.high), log=p.log)  # type: ignore[arg-type]
    return out


def trial_overrides(values: dict[str, Any]) -> list[str]:
    """Sampled values -> `dotted.key=value` strings, in a stable order."""
    return [override(k, values[k]) for k in sorted(values)]


def trial_config(sweep: Sweep, values: dict[str, Any]) -> ProjectConfig:
    return load_config(sweep.config_path, [*sweep.base_overrides, *trial_overrides(values)])


def describe(values: dict[str, Any]) -> str:
    """`train.learning_rate=0.00123 train.batch_size=8`, floats to 4 significant digits."""
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())
