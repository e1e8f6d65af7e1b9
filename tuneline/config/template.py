"""`template:` and `tokenize:` sections: prompt format and loss masking."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from tuneline.config.base import Section


class TemplateConfig(Section):
    name: Literal["auto", "tokenizer", "chatml", "llama-3", "zephyr", "alpaca", "chatml-tools"] = Field(
        default="auto",
        description="auto: the tokenizer's own chat template, else chatml. 'tokenizer' requires one.",
    )
    jinja_path: str | None = Field(default=None, description="User jinja chat template file.")

    @model_validator(mode="after")
    def _not_both(self) -> TemplateConfig:
        if self.jinja_path and self.name not in ("auto",):
            raise ValueError("set template.name or template.jinja_path, not both")
        return self


class TokenizeConfig(Section):
    max_length: int = Field(default=1024, gt=8)
    train_on: Literal["all_assistant", "last_assistant"] = "all_assistant"
    train_on_inputs: bool = Field(default=False, description="Supervise prompts too (no masking).")
    overflow: Literal["truncate", "drop", "error"] = "truncate"
    packing: bool = Field(
        default=True,
        description="Pack samples best-fit into max_length rows, kept apart by per-sample position ids "
        "(models whose attention ignores them train on padded batches instead). train.batch_size counts rows.",
    )
    allow_special_tokens_in_text: bool = Field(
        default=False, description="Let literal special-token strings in data become control tokens."
    )
    num_proc: int | None = Field(
        default=None,
        description="Worker processes for tokenizing conversations: splits of at least 20,000 records are "
        "cut into chunks tokenized in a forked pool (rows, order and stats identical to serial); smaller "
        "splits, raw text and preference data stay serial. The streaming path "
        "(tuneline.tokenize.stream) uses it for any size. None/1: serial.",
    )
