"""One training recipe for every method: setup -> train -> save (torchtune-style).

The public names live here so callers never depend on how the stage is split inside.
"""

from tuneline.train.recipe import (
    SFT_METHODS,
    SUMMARY_FILE,
    LogMetrics,
    TrainResult,
    load_summary,
    require_qlora,
    resolve_precision,
    start_model_config,
    train,
)

__all__ = [
    "SFT_METHODS",
    "SUMMARY_FILE",
    "LogMetrics",
    "TrainResult",
    "load_summary",
    "require_qlora",
    "resolve_precision",
    "start_model_config",
    "train",
]
