"""`model:` section: which base model and tokenizer, and how to load them."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from tuneline.config.base import Section


class ModelConfig(Section):
    name_or_path: str | None = Field(
        default=None,
        description="Hub name (e.g. 'Qwen/Qwen2.5-0.5B-Instruct') or local directory with weights.",
    )
    tokenizer: str | None = Field(
        default=None, description="Hub name or local directory; defaults to name_or_path."
    )
    from_config: dict[str, Any] | None = Field(
        default=None,
        description="Build a randomly initialised model from these AutoConfig.for_model kwargs "
        "(e.g. model_type: llama). For offline demos and tests; no download.",
    )
    revision: str | None = Field(default=None, description="Pinned hub revision (commit or tag).")
    trust_remote_code: bool = False
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"
    init_seed: int = Field(default=0, description="Seed for from_config random initialisation.")

    @model_validator(mode="after")
    def _one_source(self) -> ModelConfig:
        if self.name_or_path is None and self.from_config is None:
            raise ValueError("set model.name_or_path (hub name or directory) or model.from_config")
        if self.name_or_path is not None and self.from_config is not None:
            raise ValueError("set only one of model.name_or_path and model.from_config")
        if self.from_config is not None and self.tokenizer is None:
            raise ValueError("model.from_config needs model.tokenizer (a hub name or directory)")
        return self

    @property
    def tokenizer_path(self) -> str:
        return self.tokenizer or self.name_or_path  # type: ignore[return-value]
