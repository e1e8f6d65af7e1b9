"""`eval:` and `registry:` sections: how a model is judged and promoted."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from tuneline.config.base import Section

# The score keys each shipped metric reports (tuneline/evaluate/metrics), so registry.metric
# is checked when the config loads rather than after training; tests compare them with the modules.
SHIPPED_METRIC_KEYS: dict[str, tuple[str, ...]] = {
    "rouge": ("rougeL", "rouge1", "rouge2", "rougeLsum"),
    "exact_match": ("exact_match",),
    "sacrebleu": ("sacrebleu",),
    "chrf": ("chrf",),
    "tool_call": ("tool_call_accuracy", "tool_name_accuracy", "tool_call_parse_rate"),
}


class EvalConfig(Section):
    enabled: bool = Field(
        default=True, description="Score the model; a model that was not evaluated is never registered."
    )
    metrics: list[str] = Field(
        default_factory=lambda: ["rouge", "exact_match"],
        min_length=1,
        description="evaluate metrics for generated answers: shipped (rouge, exact_match, sacrebleu, chrf, "
        "loaded offline), a path to a metric script, or a Hugging Face Hub metric name (needs the hub).",
    )
    metric_kwargs: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Compute arguments per metric, e.g. {rouge: {use_stemmer: true}}."
    )
    bootstrap_resamples: int = Field(
        default=1000, ge=1, description="Bootstrap resamples behind every confidence interval and p-value."
    )
    max_samples: int | None = Field(default=64, gt=0, description="Held-out records scored by generation.")
    max_new_tokens: int = Field(default=64, gt=0)
    batch_size: int = Field(default=8, gt=0)
    compare_base: bool = Field(default=True, description="Score the base model too.")
    split: Literal["validation", "test"] = "validation"

    @model_validator(mode="after")
    def _kwargs_name_metrics(self) -> EvalConfig:
        extra = sorted(set(self.metric_kwargs) - set(self.metrics))
        if extra:
            raise ValueError(
                f"eval.metric_kwargs: {extra} are not in eval.metrics {self.metrics}; add them there or drop them"
            )
        return self

    def score_keys(self) -> tuple[str, ...] | None:
        """Keys the generated answers are scored under, or None when a metric is not shipped
        (its keys are known only once it runs)."""
        keys: list[str] = []
        for name in self.metrics:
            if name not in SHIPPED_METRIC_KEYS:
                return None
            keys += SHIPPED_METRIC_KEYS[name]
        return tuple(keys)


class RegistryConfig(Section):
    model_name: str = Field(default="tuneline-model", min_length=1)
    enabled: bool = Field(default=True, description="Register the model version at all.")
    promote: bool = True
    alias: str = Field(default="champion", min_length=1)
    metric: str | None = Field(
        default=None,
        description="Eval metric that decides promotion. Default by method: the first score of "
        "eval.metrics, rougeL by default (chat SFT), eval_loss (continued pretraining), "
        "preference_accuracy (dpo/orpo).",
    )
    greater_is_better: bool | None = Field(
        default=None, description="Default: false for loss-like metrics (eval_loss), true otherwise."
    )
    min_improvement_over_base: float = Field(
        default=0.0, description="Required gain of the metric over the base model to register at all."
    )
    min_margin: float = Field(
        default=0.0,
        ge=0,
        allow_inf_nan=False,
        description="Promote only when the metric beats the champion (or, with no champion, the base) "
        "by strictly more than this; smaller gains register the version as the challenger.",
    )
    require_significance: bool = Field(
        default=False,
        description="Promote only when the paired bootstrap says the gain over the same reference "
        "(the champion, else the base model) is significant.",
    )
    tie_break_metric: str | None = Field(
        default=None,
        description="Metric that breaks an exact tie on `metric` (higher is better). Default: "
        "logprob_margin for preference_accuracy (dpo/orpo), none otherwise.",
    )


class TrackingConfig(Section):
    mlflow_tracking_uri: str | None = Field(
        default=None,
        description="MLflow tracking URI; default MLFLOW_TRACKING_URI or sqlite in TUNELINE_HOME.",
    )
    experiment_name: str | None = Field(default=None, description="Defaults to the pipeline name.")
