"""Percentile bootstrap over eval samples: a confidence interval for a score, and for a paired delta.

A score on 64 held-out prompts is one draw; the interval says how far another draw of 64
could move it, and the paired delta says whether the fine-tuned model beat its base on
*these* prompts by more than that noise. Every resample recomputes the metric the way the
metric defines it: for a mean (ROUGE, exact match) that is the mean of the resampled
per-sample scores, for a corpus metric (sacreBLEU, chrF) it is the corpus score of the
resampled sentences, which summed sufficient statistics make cheap. Averaging sentence BLEU
would bootstrap a different metric.

Resamples come from a numpy Generator with a fixed seed, so the same inputs give the same
interval on every machine and thread count; nothing here compares floats to a threshold.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_RESAMPLES = 1000
DEFAULT_SEED = 0
DEFAULT_CONFIDENCE = 0.95

# Scores of one system on the samples picked by an index array (repeats allowed): {key: value}.
ScoreOn = Callable[[np.ndarray], Mapping[str, float]]


@dataclass(frozen=True)
class Estimate:
    """A score on all samples and its percentile bootstrap interval."""

    value: float
    ci_low: float
    ci_high: float


@dataclass(frozen=True)
class PairedEstimate:
    """Score(tuned) - score(base) on the same samples, its interval and a one-sided test.

    `p_value` is the bootstrap probability that the tuned system is *not* better (its delta
    in the wrong direction or zero), add-one smoothed so it is never 0; `significant` means
    p < 1 - confidence, i.e. better at the 95% level by default.
    """

    delta: float
    ci_low: float
    ci_high: float
    p_value: float
    significant: bool


@dataclass(frozen=True)
class SufficientStatistics:
    """Per-sample statistics whose column sums determine a metric, and the rule that turns sums into scores.

    `values` has one row per sample; `from_totals(totals, n)` gives the metric of any n
    samples from the sum of their rows. A mean metric stores its per-sample score
    (from_totals divides by n); BLEU stores n-gram match counts and lengths, so the corpus
    score of a resample is exact and costs one sum, not a re-tokenisation.
    """

    values: np.ndarray
    from_totals: Callable[[np.ndarray, int], Mapping[str, object]]

    @property
    def n(self) -> int:
        return int(self.values.shape[0])

    def __call__(self, idx: np.ndarray) -> dict[str, object]:
        return dict(self.from_totals(self.values[idx].sum(axis=0), len(idx)))

    def per_sample(self) -> list[dict[str, object]]:
        """The metric on each sample alone (sentence-level BLEU for a corpus metric)."""
        return [dict(self.from_totals(row, 1)) for row in self.values]


def mean_statistics(per_sample: Mapping[str, Sequence[float]]) -> SufficientStatistics:
    """Statistics of metrics that are the mean of a per-sample score (accuracy, ROUGE F, ...)."""
    keys = list(per_sample)
    columns = [np.asarray(per_sample[k], dtype=np.float64) for k in keys]
    n = len(columns[0]) if columns else 0
    if any(len(c) != n for c in columns):
        raise ValueError(f"per-sample scores of {keys} differ in length: {[len(c) for c in columns]}")
    values = np.stack(columns, axis=1) if columns else np.zeros((0, 0))

    def from_totals(totals: np.ndarray, count: int) -> dict[str, float]:
        return {k: float(totals[j] / count) for j, k in enumerate(keys)}

    return SufficientStatistics(values, from_totals)


def resample_indices(n: int, n_resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED) -> np.ndarray:
    """(n_resamples, n) sample indices drawn with replacement; the same for the same (n, n_resamples, seed)."""
    if n < 1:
        raise ValueError("bootstrap needs at least one sample")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    return np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))


def scalar_scores(scores: Mapping[str, object]) -> dict[str, float]:
    """The scalar scores of a metric's output; lists and strings (counts, signatures) are not bootstrapped."""
    out: dict[str, float] = {}
    for k, v in scores.items():
        if isinstance(v, bool) or not isinstance(v, int | float | np.integer | np.floating):
            continue
        out[k] = float(v)
    return out


def _bounds(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    tail = (1 - confidence) / 2
    low, high = np.quantile(samples, [tail, 1 - tail])
    return float(low), float(high)


@dataclass(frozen=True)
class Replicates:
    """A system's scores on all samples (`point`) and on each bootstrap resample (`samples[key]`)."""

    point: dict[str, float]
    samples: dict[str, np.ndarray]


def replicates(
    score_on: ScoreOn, n: int, *, n_resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED
) -> Replicates:
    """Scores on all n samples and on `n_resamples` seeded resamples; two systems given the same
    (n, n_resamples, seed) see the same resamples, which is what makes a comparison paired."""
    point = scalar_scores(score_on(np.arange(n)))
    rows = [scalar_scores(score_on(idx)) for idx in resample_indices(n, n_resamples, seed)]
    return Replicates(point, {k: np.asarray([r[k] for r in rows], dtype=np.float64) for k in point})


def estimates(reps: Replicates, confidence: float = DEFAULT_CONFIDENCE) -> dict[str, Estimate]:
    return {k: Estimate(v, *_bounds(reps.samples[k], confidence)) for k, v in reps.point.items()}


def paired_estimates(
    base: Replicates,
    tuned: Replicates,
    confidence: float = DEFAULT_CONFIDENCE,
    greater_is_better: Callable[[str], bool] | bool = True,
) -> dict[str, PairedEstimate]:
    """Delta tuned - base per score key, from replicates drawn on the same resamples.

    Pairing cancels what the two systems share (an easy prompt is easy for both), so the
    interval is much tighter than the difference of two independent intervals.
    """
    out = {}
    for k in [k for k in tuned.point if k in base.point]:
        d = tuned.samples[k] - base.samples[k]
        better = greater_is_better(k) if callable(greater_is_better) else greater_is_better
        not_better = int(np.count_nonzero(d <= 0 if better else d >= 0))
        p_value = (not_better + 1) / (len(d) + 1)
        low, high = _bounds(d, confidence)
        out[k] = PairedEstimate(tuned.point[k] - base.point[k], low, high, p_value, p_value < 1 - confidence)
    return out


def bootstrap(
    score_on: ScoreOn,
    n: int,
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    confidence: float = DEFAULT_CONFIDENCE,
) -> dict[str, Estimate]:
    """Percentile bootstrap interval for every scalar score `score_on` returns on n samples."""
    return estimates(replicates(score_on, n, n_resamples=n_resamples, seed=seed), confidence)


def paired_bootstrap(
    score_base: ScoreOn,
    score_tuned: ScoreOn,
    n: int,
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    confidence: float = DEFAULT_CONFIDENCE,
    greater_is_better: Callable[[str], bool] | bool = True,
) -> dict[str, PairedEstimate]:
    """Delta tuned - base per score key, resampling the same samples for both systems."""
    base = replicates(score_base, n, n_resamples=n_resamples, seed=seed)
    tuned = replicates(score_tuned, n, n_resamples=n_resamples, seed=seed)
    return paired_estimates(base, tuned, confidence, greater_is_better)
