"""`train.openai:` section, and the checks that keep local-only settings from being silently
ignored when `train.backend: openai` hands training to the OpenAI fine-tuning API."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from tuneline.config.base import Section

# train.* keys the API has no counterpart for (or one under train.openai), with the fix.
LOCAL_ONLY_TRAIN_KEYS = {
    "adapter": "the API chooses how the model is adapted; remove it",
    "learning_rate": "use train.openai.learning_rate_multiplier",
    "optimizer": "the API chooses the optimizer; remove it",
    "max_steps": "use train.openai.n_epochs",
    "num_epochs": "use train.openai.n_epochs",
    "batch_size": "use train.openai.batch_size",
    "gradient_accumulation_steps": "use train.openai.batch_size",
    "lr_scheduler": "the API chooses the schedule; remove it",
    "warmup_ratio": "the API chooses the schedule; remove it",
    "weight_decay": "the API chooses it; remove it",
    "max_grad_norm": "the API chooses it; remove it",
    "precision": "the API chooses the precision; remove it",
    "gradient_checkpointing": "no local training runs; remove it",
    "logging_steps": "the API reports every step; remove it",
    "eval_steps": "the API reports validation loss itself; remove it",
    "early_stopping_patience": "the API has no early stopping; remove it",
    "save_steps": "the API keeps its own checkpoints; remove it",
    "save_total_limit": "the API keeps its own checkpoints; remove it",
    "resume": "an interrupted job is resumed by its inputs' fingerprint; remove it",
    "merge_adapter": "the API serves the tuned model; remove it",
    "lora": "the API has no LoRA settings; remove the section",
    "preference": "only supervised fine-tuning is supported with the openai backend",
    "resources": "no local training runs; remove the section",
}
# Methods that mean chat SFT; the API decides adapter vs full weights itself.
OPENAI_METHODS = ("lora", "full")


class OpenAIConfig(Section):
    """The fine-tuning job (supervised method) and how to reach the API. The key itself is never
    part of the config: it comes from `api_key_env` or the ZenML secret `secret_name`."""

    n_epochs: int | Literal["auto"] = Field(default="auto", description="Epochs; auto: the API's default.")
    batch_size: int | Literal["auto"] = "auto"
    learning_rate_multiplier: float | Literal["auto"] = "auto"
    suffix: str | None = Field(
        default=None, max_length=64, description="Up to 64 characters added to the fine-tuned model's name."
    )
    seed: int | None = Field(default=None, description="Job seed; defaults to train.seed.")
    max_cost_usd: float | None = Field(
        default=None, gt=0, description="Stop before uploading anything when the estimate exceeds this."
    )
    price_per_million_tokens: float | None = Field(
        default=None,
        gt=0,
        description="Training price (USD per 1M tokens) for a base model not in the table.",
    )
    base_url: str | None = Field(
        default=None, description="A compatible endpoint; else $OPENAI_BASE_URL, else api.openai.com."
    )
    api_key_env: str = Field(default="OPENAI_API_KEY", description="Environment variable holding the key.")
    secret_name: str | None = Field(
        default=None, description="ZenML secret (key 'api_key') used when the environment has no key."
    )
    poll_interval_s: float = Field(default=15.0, gt=0)
    timeout_s: float | None = Field(
        default=None, gt=0, description="Give up (and cancel the job) after this long; None: wait."
    )

    @field_validator("n_epochs", "batch_size")
    @classmethod
    def _positive(cls, v: Any) -> Any:
        if v != "auto" and v <= 0:
            raise ValueError("must be a positive integer or 'auto'")
        return v

    @field_validator("learning_rate_multiplier")
    @classmethod
    def _positive_float(cls, v: Any) -> Any:
        if v != "auto" and v <= 0:
            raise ValueError("must be a positive number or 'auto'")
        return v

    @field_validator("base_url")
    @classmethod
    def _no_credentials(cls, v: str | None) -> str | None:
        from urllib.parse import urlsplit

        if v and (urlsplit(v).username or urlsplit(v).password):
            raise ValueError("must not carry credentials; the key comes from train.openai.api_key_env")
        return v


def _is_default(train_cls: Any, key: str, value: Any, data: dict[str, Any]) -> bool:
    """A key holding its default changes nothing, so it is accepted: a saved and reloaded config
    (every key written out) validates like the one it came from."""
    from pydantic import BaseModel, ValidationError

    if key == "learning_rate":
        from tuneline.config.train import default_learning_rate

        method, adapter = str(data.get("method", "lora")), str(data.get("adapter", "auto"))
        return value is None or value == default_learning_rate(method, adapter)
    default = train_cls.model_fields[key].get_default(call_default_factory=True)
    if isinstance(default, BaseModel):
        raw = value.model_dump() if isinstance(value, BaseModel) else value
        try:
            return type(default).model_validate(raw).model_dump() == default.model_dump()
        except ValidationError:
            return False
    return value == default


def check_backend_keys(train_cls: Any, data: Any) -> Any:
    """Before defaults fill them in: with the openai backend, a local-only train key set to other
    than its default is an error naming its counterpart; with the local backend, a non-default
    `train.openai` section is."""
    if not isinstance(data, dict):
        return data
    backend = data.get("backend", "local")
    if backend != "openai":
        if "openai" in data and not _is_default(train_cls, "openai", data["openai"], data):
            raise ValueError(
                "train.openai is only read with train.backend: openai; remove it or set the backend"
            )
        return data
    method = data.get("method", "lora")
    if method not in OPENAI_METHODS:
        raise ValueError(
            f"train.method={method} cannot run with train.backend: openai (supervised chat fine-tuning "
            f"only); use train.method: lora or full, or train.backend: local"
        )
    bad = [
        f"train.{k} ({fix})"
        for k, fix in LOCAL_ONLY_TRAIN_KEYS.items()
        if k in data and not _is_default(train_cls, k, data[k], data)
    ]
    if bad:
        raise ValueError("local-training keys would be ignored with train.backend: openai: " + "; ".join(bad))
    return data


def check_openai_project(cfg: Any) -> None:
    """Project-level rules of the openai backend: no eval loss to rank on, a key source, chat data."""
    if cfg.train.backend != "openai":
        return
    if cfg.registry.metric == "eval_loss" or cfg.registry.tie_break_metric == "eval_loss":
        raise ValueError(
            "registry.metric: eval_loss is not available with train.backend: openai (the API returns "
            "answers, not token losses); rank on a generation metric such as rougeL, or remove the key"
        )
    if cfg.eval.enabled and not cfg.eval.metrics:
        raise ValueError(
            "eval.metrics is empty: with train.backend: openai evaluation scores generated answers only"
        )
    if getattr(cfg.retrain, "when", None) == "data_changed":
        raise ValueError(
            "retrain.when: data_changed is not supported with train.backend: openai (a rerun on the same "
            "data attaches to the finished job and pays nothing); remove the key"
        )
    if cfg.tokenize.train_on_inputs:
        raise ValueError(
            "tokenize.train_on_inputs: the fine-tuning API trains on assistant turns only; remove it"
        )
    if cfg.model.from_config is not None or cfg.model.tokenizer is not None:
        raise ValueError(
            "model: with train.backend: openai set only model.name_or_path (an OpenAI base model such as "
            "gpt-4.1-mini-2025-04-14); model.from_config / model.tokenizer are local-only"
        )
