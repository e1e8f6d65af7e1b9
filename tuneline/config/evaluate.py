"""`eval:` and `registry:` sections: how a model is judged and promoted."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from tuneline.config.base import Section


class EvalConfig(Section):
    enabled: bool = True
    max_samples: int | None = Field(default=64, gt=0, description="Held-out records scored by generation.")
    max_new_tokens: int = Field(default=64, gt=0)
    batch_size: int = Field(default=8, gt=0)
    compare_base: bool = Field(default=True, description="Score the base model too.")
    split: Literal["validation", "test"] = "validation"


class RegistryConfig(Section):
    model_name: str = Field(default="tuneline-model", min_length=1)
    enabled: bool = Field(default=True, description="Register the model version at all.")
    promote: bool = True
    alias: str = Field(default="champion", min_length=1)
    metric: str | None = Field(
        default=None,
        description="Eval metric that decides promotion. Default by method: rouge_l (chat SFT), "
        "eval_loss (continued pretraining), preference_accuracy (dpo/orpo).",
    )
    greater_is_better: bool | None = Field(
        default=None, description="Default: false for loss-like metrics (eval_loss), true otherwise."
    )
    min_improvement_over_base: float = Field(
        default=0.0, description="Required gain of the metric over the base model to register at all."
    )


class TrackingConfig(Section):
    mlflow_tracking_uri: str | None = Field(
        default=None,
        description="MLflow tracking URI; default MLFLOW_TRACKING_URI or sqlite in TUNELINE_HOME.",
    )
    experiment_name: str | None = Field(default=None, description="Defaults to the pipeline name.")
