"""What people see of a run: compact progress lines, plots, and which figures MLflow shows as
curves (metrics) and which as one-off facts (params).

zenml-free and torch-free; matplotlib is imported only when a plot is drawn.
"""

from tuneline.report.keys import (
    CURVE_SECTION,
    STATS_PREFIX,
    eval_metrics_and_params,
    stats_params,
    training_metrics_and_params,
)
from tuneline.report.progress import ProgressLine, format_duration

__all__ = [
    "CURVE_SECTION",
    "STATS_PREFIX",
    "ProgressLine",
    "eval_metrics_and_params",
    "format_duration",
    "stats_params",
    "training_metrics_and_params",
]
