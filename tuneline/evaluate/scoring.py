"""`eval.metrics` -> `evaluate` metrics, scored with bootstrap intervals and base-vs-tuned deltas.

The metrics the project relies on (ROUGE, sacreBLEU, chrF, exact match) ship as metric
scripts in `metrics/` and load by path, so scoring works offline and runs no code from the
hub (`evaluate`'s wheel has no metric scripts; a bare name like "rouge" would download
one). Any other name goes to the hub, as `evaluate.load` would, unless the process is
offline, where it fails with a ConfigError instead of a long network timeout.

Loaded scripts are copied (keyed by a hash of their code) under
`<TUNELINE_HOME or .tuneline>/evaluate/modules` as the package `tuneline_evaluate_modules`,
not under HF_MODULES_CACHE: one folder holds all local state, and a distinct package name
cannot collide with `evaluate`'s own `evaluate_modules` in ~/.cache/huggingface. The folder
is fixed at the first load in a process, because Python binds that package to its first
directory.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tuneline.errors import ConfigError, Problem
from tuneline.evaluate.bootstrap import (
    DEFAULT_CONFIDENCE,
    DEFAULT_RESAMPLES,
    DEFAULT_SEED,
    ScoreOn,
    SufficientStatistics,
    bootstrap,
    estimates,
    paired_estimates,
    replicates,
    scalar_scores,
)
from tuneline.home import tuneline_home

METRICS_DIR = Path(__file__).resolve().parent / "metrics"
SHIPPED_METRICS = ("rouge", "sacrebleu", "chrf", "exact_match")
# Shipped too, but for one kind of data (references in a form of their own): tool calls.
TASK_METRICS = ("tool_call",)

# The project's exact match compares answers, not strings: "Paris." answers "paris".
DEFAULT_METRIC_KWARGS: dict[str, dict[str, Any]] = {
    "exact_match": {"ignore_case": True, "ignore_punctuation": True, "collapse_whitespace": True},
}

# Score keys where smaller is better, for the direction of the paired test; all shipped ones are larger-is-better.
LOWER_IS_BETTER = frozenset({"wer", "cer", "ter", "mer", "wil", "perplexity", "mse", "mae"})

_MODULES_PACKAGE = "tuneline_evaluate_modules"
_TRUE = {"1", "ON", "YES", "TRUE"}


@dataclass(frozen=True)
class MetricResult:
    """A score on all eval samples, its bootstrap interval, and per-sample scores where the metric has them.

    per_sample is the metric on each sample alone (sentence BLEU for sacreBLEU); None for
    hub metrics, which expose no per-sample statistics.
    """

    value: float
    ci_low: float
    ci_high: float
    per_sample: tuple[float, ...] | None = field(default=None, repr=False)

    def flat(self, key: str) -> dict[str, float]:
        return {key: self.value, f"{key}_ci_low": self.ci_low, f"{key}_ci_high": self.ci_high}


@dataclass(frozen=True)
class Comparison:
    """Base and fine-tuned scores on the same samples and the paired bootstrap of their difference."""

    base: MetricResult
    tuned: MetricResult
    delta: float
    ci_low: float
    ci_high: float
    p_value: float
    significant: bool

    def flat(self, key: str) -> dict[str, float]:
        """MLflow metrics with the base_/finetuned_/delta_ prefixes evaluation already logs."""
        return {
            **self.base.flat(f"base_{key}"),
            **self.tuned.flat(f"finetuned_{key}"),
            f"delta_{key}": self.delta,
            f"delta_{key}_ci_low": self.ci_low,
            f"delta_{key}_ci_high": self.ci_high,
            f"delta_{key}_p_value": self.p_value,
            f"delta_{key}_significant": float(self.significant),
        }


def flatten(results: Mapping[str, MetricResult | Comparison]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, result in results.items():
        out.update(result.flat(key))
    return out


def offline() -> bool:
    """The switches `evaluate` and huggingface_hub honour, read now rather than at their import."""
    if any(os.environ.get(v, "").upper() in _TRUE for v in ("HF_EVALUATE_OFFLINE", "HF_HUB_OFFLINE")):
        return True
    import evaluate.config

    return bool(evaluate.config.HF_EVALUATE_OFFLINE)


@functools.cache
def cache_dir() -> Path:
    """<TUNELINE_HOME>/evaluate: `modules/` (metric scripts as imported), `downloads/` (hub scripts),
    `data/` (evaluate's per-metric folders; scores are kept in memory, so they stay empty)."""
    from evaluate.loading import init_dynamic_modules

    root = tuneline_home() / "evaluate"
    init_dynamic_modules(name=_MODULES_PACKAGE, hf_modules_cache=str(root / "modules"))
    return root


def _modules_path() -> str:
    return str(cache_dir() / "modules" / _MODULES_PACKAGE)


def _local_script(name: str) -> Path | None:
    """A shipped name, or a path in the layout `evaluate.load` accepts (<dir>/<dir>.py or a .py file)."""
    if name in SHIPPED_METRICS or name in TASK_METRICS:
        return METRICS_DIR / name
    p = Path(name).expanduser()
    if p.suffix == ".py" or p.is_file() or (p / f"{p.name}.py").is_file():
        return p
    return None


def _cached_hub_module(name: str) -> Any:
    """A hub metric loaded online before, as `evaluate` itself falls back to offline."""
    from evaluate.loading import CachedEvaluationModuleFactory

    if "/" in name:
        candidates = [name.replace("/", "--")]
    else:
        candidates = [f"evaluate-{kind}--{name}" for kind in ("metric", "comparison", "measurement")]
    for candidate in candidates:
        try:
            return CachedEvaluationModuleFactory(candidate, dynamic_modules_path=_modules_path()).get_module()
        except FileNotFoundError:
            continue
    return None


def load_metric(name: str, *, where: str = "eval.metrics") -> Any:
    """An `evaluate` metric by name: shipped ones by path, local paths as such, others from the hub.

    `where` is the config key the name came from, for the error message.
    """
    from datasets import DownloadConfig
    from evaluate.loading import evaluation_module_factory, import_main_class

    shipped = ", ".join(SHIPPED_METRICS)
    script = _local_script(name)
    try:
        if script is not None:
            module = evaluation_module_factory(str(script), dynamic_modules_path=_modules_path())
        elif offline():
            module = _cached_hub_module(name)
            if module is None:
                raise ConfigError(
                    [
                        Problem(
                            where,
                            f"metric {name!r} is not shipped with tuneline ({shipped}) and the Hugging Face "
                            "Hub is switched off (HF_EVALUATE_OFFLINE / HF_HUB_OFFLINE), with no copy cached "
                            f"under {cache_dir() / 'modules'}. Use a shipped metric, a path to an evaluate "
                            "metric script (<dir>/<dir>.py), or load it once with the hub reachable.",
                        )
                    ]
                )
        else:
            module = evaluation_module_factory(
                name,
                dynamic_modules_path=_modules_path(),
                download_config=DownloadConfig(cache_dir=str(cache_dir() / "downloads")),
            )
    except (FileNotFoundError, ConnectionError) as e:
        source = f"no metric script at {script}" if script is not None else f"not loadable from the hub: {e}"
        raise ConfigError(
            [
                Problem(
                    where,
                    f"metric {name!r}: {source}. Shipped metrics: {shipped}; others are evaluate metric "
                    "names on the Hugging Face Hub (needs the hub reachable) or paths to <dir>/<dir>.py.",
                )
            ]
        ) from e
    metric = import_main_class(module.module_path)(
        keep_in_memory=True, cache_dir=str(cache_dir() / "data"), hash=module.hash
    )
    metric.download_and_prepare()
    return metric


def metric_scores(name: str, output: Any) -> dict[str, float]:
    """A metric's output -> the scores tuneline reports, keyed for logging.

    A metric whose output has a `score` (sacreBLEU, chrF) or is a bare number reports it
    under its own name; otherwise every scalar in the output is a score (rouge1, ...,
    exact_match). Lists and settings (counts, char_order) are not scores.
    """
    if not isinstance(output, Mapping):
        return {_short(name): float(output)}
    scalars = scalar_scores(output)
    if "score" in scalars:
        return {_short(name): scalars["score"]}
    return scalars


def _short(name: str) -> str:
    """Log key of a one-score metric: hub "owner/metric" and a path "dir/metric[.py]" become "metric"."""
    return Path(name).stem if name.endswith(".py") else name.rstrip("/").rsplit("/", 1)[-1]


@dataclass
class _Scorer:
    """One metric on one system's predictions: the score of any resample, and per-sample scores if known."""

    name: str
    score_on: ScoreOn
    per_sample: dict[str, tuple[float, ...]] | None


def _scorer(
    name: str, metric: Any, predictions: Sequence[str], references: Sequence[Any], kwargs: Mapping[str, Any]
) -> _Scorer:
    if hasattr(metric, "sufficient_statistics"):
        values, from_totals = metric.sufficient_statistics(list(predictions), list(references), **kwargs)
        stats = SufficientStatistics(values, from_totals)
        rows = [metric_scores(name, s) for s in stats.per_sample()]
        per_sample = {k: tuple(r[k] for r in rows) for k in (rows[0] if rows else {})}
        return _Scorer(name, lambda idx: metric_scores(name, stats(idx)), per_sample)

    # A hub metric is a black box: each resample recomputes it on the resampled samples,
    # exact for any metric (corpus-level included) at the cost of one compute per resample.
    def score_on(idx: np.ndarray) -> dict[str, float]:
        out = metric.compute(
            predictions=[predictions[i] for i in idx], references=[references[i] for i in idx], **kwargs
        )
        return metric_scores(name, out)

    return _Scorer(name, score_on, None)


def _kwargs_for(
    names: Sequence[str], metric_kwargs: Mapping[str, Mapping[str, Any]] | None
) -> dict[str, dict]:
    extra = set(metric_kwargs or {}) - set(names)
    if extra:
        raise ValueError(f"metric_kwargs for {sorted(extra)}, which are not among the metrics {list(names)}")
    return {n: {**DEFAULT_METRIC_KWARGS.get(n, {}), **(metric_kwargs or {}).get(n, {})} for n in names}


def _claim(owners: dict[str, str], name: str, keys: Sequence[str]) -> None:
    """Record which metric reports each key; two metrics reporting one key would overwrite each other."""
    for k in keys:
        if k in owners:
            raise ConfigError(
                [
                    Problem(
                        "eval.metrics",
                        f"metrics {owners[k]!r} and {name!r} both report {k!r}; keep one of them.",
                    )
                ]
            )
        owners[k] = name


def _result(estimate: Any, per_sample: dict[str, tuple[float, ...]] | None, key: str) -> MetricResult:
    return MetricResult(estimate.value, estimate.ci_low, estimate.ci_high, (per_sample or {}).get(key))


def score(
    names: Sequence[str],
    predictions: Sequence[str],
    references: Sequence[Any],
    *,
    metric_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    confidence: float = DEFAULT_CONFIDENCE,
) -> dict[str, MetricResult]:
    """{score key: MetricResult} for each metric in `names` on these predictions; {} without samples.

    metric_kwargs[name] are the metric's compute arguments (e.g. {"rouge": {"use_stemmer": True}}),
    on top of DEFAULT_METRIC_KWARGS.
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    kwargs = _kwargs_for(names, metric_kwargs)
    if not predictions:
        return {}
    metrics = [load_metric(name, where=f"eval.metrics[{i}]") for i, name in enumerate(names)]
    out: dict[str, MetricResult] = {}
    owners: dict[str, str] = {}
    for name, metric in zip(names, metrics, strict=True):
        scorer = _scorer(name, metric, predictions, references, kwargs[name])
        found = bootstrap(
            scorer.score_on, len(predictions), n_resamples=n_resamples, seed=seed, confidence=confidence
        )
        _claim(owners, name, list(found))
        out.update({k: _result(e, scorer.per_sample, k) for k, e in found.items()})
    return out


def compare_systems(
    names: Sequence[str],
    base_predictions: Sequence[str],
    tuned_predictions: Sequence[str],
    references: Sequence[Any],
    *,
    metric_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    confidence: float = DEFAULT_CONFIDENCE,
    lower_is_better: frozenset[str] = LOWER_IS_BETTER,
) -> dict[str, Comparison]:
    """{score key: Comparison} of base and fine-tuned answers to the same prompts; {} without samples.

    Both systems are scored on the same bootstrap resamples (one seed), so each interval
    matches what `score` gives and the delta is paired.
    """
    if not len(base_predictions) == len(tuned_predictions) == len(references):
        raise ValueError(
            f"{len(base_predictions)} base and {len(tuned_predictions)} tuned predictions "
            f"for {len(references)} references"
        )
    kwargs = _kwargs_for(names, metric_kwargs)
    n = len(references)
    if n == 0:
        return {}
    metrics = [load_metric(name, where=f"eval.metrics[{i}]") for i, name in enumerate(names)]
    out: dict[str, Comparison] = {}
    owners: dict[str, str] = {}
    for name, metric in zip(names, metrics, strict=True):
        base = _scorer(name, metric, base_predictions, references, kwargs[name])
        tuned = _scorer(name, metric, tuned_predictions, references, kwargs[name])
        base_reps = replicates(base.score_on, n, n_resamples=n_resamples, seed=seed)
        tuned_reps = replicates(tuned.score_on, n, n_resamples=n_resamples, seed=seed)
        base_est, tuned_est = estimates(base_reps, confidence), estimates(tuned_reps, confidence)
        deltas = paired_estimates(
            base_reps, tuned_reps, confidence, greater_is_better=lambda k: k not in lower_is_better
        )
        _claim(owners, name, list(deltas))
        for k, d in deltas.items():
            out[k] = Comparison(
                base=_result(base_est[k], base.per_sample, k),
                tuned=_result(tuned_est[k], tuned.per_sample, k),
                delta=d.delta,
                ci_low=d.ci_low,
                ci_high=d.ci_high,
                p_value=d.p_value,
                significant=d.significant,
            )
    return out
