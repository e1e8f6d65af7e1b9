"""Offline metrics with confidence intervals: how sure a base-vs-fine-tuned verdict is.

Importing this package loads neither `evaluate` nor any metric backend and touches no
network; those load when a metric is first scored. The `bootstrap` function is not re-exported:
`tuneline.evaluate.bootstrap` is the module (step cache keys resolve modules by that name).
Running models and the report (`generate`, `judge`, `report`) are imported from their modules,
so this package stays free of torch.
"""

from tuneline.evaluate.bootstrap import (
    Estimate,
    PairedEstimate,
    Replicates,
    SufficientStatistics,
    estimates,
    mean_statistics,
    paired_bootstrap,
    paired_estimates,
    replicates,
    resample_indices,
)
from tuneline.evaluate.scoring import (
    DEFAULT_METRIC_KWARGS,
    SHIPPED_METRICS,
    Comparison,
    MetricResult,
    compare_systems,
    flatten,
    load_metric,
    metric_scores,
    score,
)

__all__ = [
    "DEFAULT_METRIC_KWARGS",
    "SHIPPED_METRICS",
    "Comparison",
    "Estimate",
    "MetricResult",
    "PairedEstimate",
    "Replicates",
    "SufficientStatistics",
    "compare_systems",
    "estimates",
    "flatten",
    "load_metric",
    "mean_statistics",
    "metric_scores",
    "paired_bootstrap",
    "paired_estimates",
    "replicates",
    "resample_indices",
    "score",
]
