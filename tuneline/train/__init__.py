"""One training recipe for every method: setup -> train -> save (torchtune-style).

`recipe.train()` is the entry; `loading` (models and tokenizers in training precision),
`models` (adapter/full wrapping, new token rows), `trainers` (TrainingArguments, the HF/TRL
Trainer), `callbacks` (metrics, non-finite guard, early stopping, durable checkpoints) and
`checkpoints` (the on-disk protocol) are its parts. The public names live here so callers
never depend on how the stage is split inside.
"""

from tuneline.train.loading import require_qlora, resolve_precision
from tuneline.train.models import start_model_config
from tuneline.train.recipe import SFT_METHODS, SUMMARY_FILE, LogMetrics, TrainResult, load_summary, train

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
