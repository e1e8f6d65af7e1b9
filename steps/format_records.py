"""Choose the prompt format (chat template) and show how records render with it."""

from __future__ import annotations

from typing import Annotated

from zenml import step
from zenml.types import MarkdownString

from tuneline.config import ModelConfig, TemplateConfig
from tuneline.data.records import RecordSet
from tuneline.tokenize.templates import resolve_chat_template
from tuneline.train.loading import load_tokenizer


@step
def format_records(
    dataset: RecordSet,
    model_config: dict,
    template_config: dict,
    base_dir: str,
    local_files_fingerprint: str,
    num_examples: int = 3,
) -> tuple[Annotated[str, "chat_template"], Annotated[MarkdownString, "formatted_examples"]]:
    """`local_files_fingerprint` is a cache key only: an edited tokenizer or jinja file at the
    same path re-runs formatting and everything downstream of it."""
    tokenizer = load_tokenizer(ModelConfig.model_validate(model_config), base_dir)
    tcfg = TemplateConfig.model_validate(template_config)
    template = resolve_chat_template(tokenizer, tcfg, base_dir)
    tokenizer.chat_template = template
    lines = ["# Formatted examples", "", f"Template source: `{tcfg.jinja_path or tcfg.name}`", ""]
    for rec in dataset.splits.get("train", [])[:num_examples]:
        if rec.kind == "text":
            text = rec.text or ""
        else:
            msgs = rec.messages + (rec.chosen or [])
            text = tokenizer.apply_chat_template(msgs, tokenize=False)
        lines += ["```", text, "```", ""]
    return template, MarkdownString("\n".join(lines))
