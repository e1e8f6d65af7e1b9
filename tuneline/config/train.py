"""`train:` section: method, optimisation and checkpointing."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from tuneline.config.base import Section


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
        description="Start from this model: hub name, directory or 'models:/<name>@<alias>' (registry).",
    )
    max_prompt_length: int | None = None


class ResourcesConfig(Section):
    """Passed to ZenML ResourceSettings on the train step (used by step operators/orchestrators)."""

    gpu_count: int | None = Field(default=None, ge=0)
    cpu_count: float | None = Field(default=None, gt=0)
    memory: str | None = Field(default=None, description="e.g. '32GB'")
    step_operator: str | None = Field(default=None, description="Name of a ZenML step operator.")
    accelerate: bool = Field(default=False, description="Run the train step with run_with_accelerate.")
    num_processes: int | None = None
    accelerate_config: str | None = Field(default=None, description="accelerate config file (FSDP/DeepSpeed).")


class TrainConfig(Section):
    method: Literal["lora", "qlora", "full", "cpt", "dpo", "orpo"] = "lora"
    learning_rate: float = Field(default=2e-4, gt=0)
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

    @model_validator(mode="after")
    def _steps_or_epochs(self) -> TrainConfig:
        if self.max_steps == 0 or self.max_steps < -1:
            raise ValueError("train.max_steps must be a positive number of steps, or -1 to use num_epochs")
        return self
