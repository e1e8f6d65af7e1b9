"""`train:` section: method, optimisation and checkpointing."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from tuneline.config.base import Section
from tuneline.config.openai_backend import OpenAIConfig, check_backend_keys

# What each method trains on: chat records (SFT), raw text (continued pretraining) or pairs.
METHOD_KIND = {
    "lora": "chat",
    "qlora": "chat",
    "full": "chat",
    "cpt": "text",
    "dpo": "preference",
    "orpo": "preference",
    "kto": "preference",  # unpaired: labelled answers (or pairs, split into two)
}
# What evaluation reports for each kind besides the `eval.metrics` scores of generated
# answers (chat only), i.e. what registry.metric may name.
EVAL_METRICS = {
    "chat": ("eval_loss",),
    "text": ("eval_loss",),
    "preference": (
        "preference_accuracy",
        "logprob_margin",
        "preference_accuracy_normalized",
        "logprob_margin_normalized",
    ),
}
# None for chat: the first score of `eval.metrics` (rougeL with the default metrics).
DEFAULT_METRIC = {"chat": None, "text": "eval_loss", "preference": "preference_accuracy"}
# Methods whose evaluation reports other scores than their kind's (KTO data has no pairs to rank).
METHOD_EVAL_METRICS = {"kto": ("kto_reward_auc", "kto_label_accuracy", "kto_reward_margin")}
METHOD_DEFAULT_METRIC = {"kto": "kto_reward_auc"}
LOWER_IS_BETTER = {"eval_loss"}
# Promotion metrics that were renamed: the old name gets a did-you-mean, not a bare "unknown".
RENAMED_METRICS = {"rouge_l": "rougeL"}


def eval_metrics_for(method: str) -> tuple[str, ...]:
    """The scores evaluation reports for `method` besides `eval.metrics` (what registry.metric may name)."""
    return METHOD_EVAL_METRICS.get(method) or EVAL_METRICS[METHOD_KIND[method]]


def default_metric_for(method: str) -> str | None:
    return METHOD_DEFAULT_METRIC.get(method) or DEFAULT_METRIC[METHOD_KIND[method]]


class LoraConfig(Section):
    r: int = Field(default=16, gt=0)
    alpha: int = Field(default=32, gt=0)
    dropout: float = Field(default=0.05, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    use_dora: bool = False
    use_rslora: bool = False
    modules_to_save: list[str] | None = None


class PreferenceConfig(Section):
    beta: float = Field(default=0.1, gt=0)
    reference_model: str | None = Field(
        default=None,
        description="Start from this model (it is also the DPO reference): hub name, full-model directory, "
        "LoRA adapter directory (loaded on model.*) or 'models:/<name>@<alias>' (registry).",
    )
    max_prompt_length: int | None = None
    max_length: int | None = Field(
        default=None, gt=8, description="Prompt + response tokens; defaults to tokenize.max_length."
    )
    desirable_weight: float | None = Field(
        default=None, gt=0, description="kto: loss weight of desirable answers (default 1.0)."
    )
    undesirable_weight: float | None = Field(
        default=None,
        gt=0,
        description="kto: loss weight of undesirable answers (default 1.0); with unequal counts, "
        "keep desirable_weight * n_desirable / (undesirable_weight * n_undesirable) in [1, 1.33].",
    )


class ResourcesConfig(Section):
    """Passed to ZenML ResourceSettings on the train step (used by step operators/orchestrators)."""

    gpu_count: int | None = Field(default=None, ge=0)
    cpu_count: float | None = Field(default=None, gt=0)
    memory: str | None = Field(default=None, description="e.g. '32GB'")
    step_operator: str | None = Field(default=None, description="Name of a ZenML step operator.")
    accelerate: bool = Field(
        default=False,
        description="Train in launched worker processes (tuneline.train.distributed: accelerate launch on GPUs, "
        "torchrun on CPU) instead of inside the step's process.",
    )
    num_processes: int | None = Field(
        default=None, ge=1, description="Ranks to launch; default: one per visible GPU (1 on CPU)."
    )
    accelerate_config: str | None = Field(
        default=None, description="accelerate config file (FSDP/DeepSpeed)."
    )


Method = Literal["lora", "qlora", "full", "cpt", "dpo", "orpo", "kto"]

# Full fine-tuning moves every weight, so it wants a ~10x smaller step than an adapter;
# preference losses are sharper still. These are the usual published starting points.
_FULL_LR = {"lora": 2e-4, "qlora": 2e-4, "full": 2e-5, "cpt": 2e-5, "dpo": 5e-6, "orpo": 8e-6, "kto": 5e-6}
_ADAPTER_LR = {"lora": 2e-4, "qlora": 2e-4, "full": 2e-5, "cpt": 2e-4, "dpo": 5e-5, "orpo": 8e-5, "kto": 5e-5}


def default_adapter(method: str) -> str:
    """qlora/lora train adapters by definition; preference tuning defaults to LoRA because it keeps a
    frozen reference for free (adapters disabled) instead of a second model copy; full and cpt update
    every weight."""
    return "lora" if method in ("lora", "qlora", "dpo", "orpo", "kto") else "none"


def default_learning_rate(method: str, adapter: str = "auto") -> float:
    uses_lora = (default_adapter(method) if adapter == "auto" else adapter) == "lora"
    return (_ADAPTER_LR if uses_lora else _FULL_LR).get(method, 2e-4)


class TrainConfig(Section):
    method: Method = "lora"
    adapter: Literal["auto", "lora", "none"] = Field(
        default="auto",
        description="Train a LoRA adapter or all weights. auto: lora for lora/qlora/dpo/orpo, none (full "
        "weights) for full/cpt. Set 'lora' for LoRA continued pretraining or LoRA-free DPO with 'none'.",
    )
    learning_rate: float = Field(
        default=2e-4,
        gt=0,
        description="Defaults per method: 2e-4 adapters, 2e-5 full/cpt, 5e-6 dpo/kto, 8e-6 orpo (x10 with LoRA).",
    )
    optimizer: Literal["adamw_torch", "adamw_torch_fused", "adamw_8bit", "paged_adamw_8bit"] = Field(
        default="adamw_torch_fused",
        description="fused: one kernel for the whole update (CPU and CUDA), ~5x cheaper than adamw_torch on "
        "CPU. 8-bit/paged variants need bitsandbytes (CUDA).",
    )
    max_steps: int = Field(default=-1, description="-1: run num_epochs.")
    num_epochs: float = Field(default=1.0, gt=0)
    batch_size: int = Field(default=8, gt=0)
    gradient_accumulation_steps: int = Field(default=1, gt=0)
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "cosine"
    warmup_ratio: float = Field(default=0.03, ge=0, lt=1)
    weight_decay: float = Field(default=0.0, ge=0)
    max_grad_norm: float = Field(default=1.0, gt=0)
    seed: int = 42
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    gradient_checkpointing: bool = False
    logging_steps: int = Field(default=10, gt=0)
    eval_steps: int | None = Field(default=None, gt=0, description="Evaluate every N steps.")
    early_stopping_patience: int | None = Field(default=None, gt=0)
    save_steps: int = Field(default=100, gt=0)
    save_total_limit: int = Field(default=2, gt=0)
    resume: Literal["auto", "never"] = "auto"
    merge_adapter: bool = Field(default=False, description="Also export a merged full model (lora).")
    lora: LoraConfig = Field(default_factory=LoraConfig)
    preference: PreferenceConfig = Field(default_factory=PreferenceConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    backend: Literal["local", "openai"] = Field(
        default="local", description="openai: train through the OpenAI fine-tuning API (train.openai)."
    )
    openai: OpenAIConfig = Field(default_factory=OpenAIConfig)

    @model_validator(mode="before")
    @classmethod
    def _method_defaults(cls, data: Any) -> Any:
        """Fill the learning rate from the method when the user did not choose one, so switching
        `train.method` alone never runs full fine-tuning at an adapter's learning rate."""
        if isinstance(data, dict) and data.get("learning_rate") is None:
            data = dict(data)
            data["learning_rate"] = default_learning_rate(
                str(data.get("method", "lora")), str(data.get("adapter", "auto"))
            )
        return data

    @model_validator(mode="before")
    @classmethod
    def _backend_keys(cls, data: Any) -> Any:
        """Runs before `_method_defaults` (pydantic runs later "before" validators first): it sees
        only the keys the user wrote."""
        return check_backend_keys(cls, data)

    @model_validator(mode="after")
    def _steps_or_epochs(self) -> TrainConfig:
        if self.max_steps == 0 or self.max_steps < -1:
            raise ValueError("train.max_steps must be a positive number of steps, or -1 to use num_epochs")
        if self.method in ("lora", "qlora") and self.adapter == "none":
            raise ValueError(
                f"train.method={self.method} trains an adapter; use train.method=full for all weights"
            )
        if self.method == "full" and self.adapter == "lora":
            raise ValueError("train.method=full trains all weights; use train.method=lora for an adapter")
        if self.early_stopping_patience is not None and self.eval_steps is None:
            raise ValueError("train.early_stopping_patience needs train.eval_steps (evaluate every N steps)")
        if self.method in ("dpo", "kto") and self.preference.max_prompt_length is not None:
            # TRL 1.16's DPOTrainer has no prompt-length limit; silently ignoring the key would mislead.
            raise ValueError(
                f"train.preference.max_prompt_length is only used by orpo; for {self.method} limit the whole "
                "sequence with train.preference.max_length"
            )
        from tuneline.config.kto import check_kto

        check_kto(self)
        return self

    @property
    def uses_lora(self) -> bool:
        return (default_adapter(self.method) if self.adapter == "auto" else self.adapter) == "lora"

    @property
    def is_preference(self) -> bool:
        return self.method in ("dpo", "orpo", "kto")
