"""Choose the prompt format (chat template) and show how records render with it."""

from __future__ import annotations

from typing import Annotated

from zenml import step
from zenml.types import MarkdownString

from steps._caching import cache_policy
from tuneline.config import ModelConfig, TemplateConfig
from tuneline.data.records import RecordSet
from tuneline.tokenize.preview import formatted_examples
from tuneline.tokenize.templates import resolve_chat_template
from tuneline.train.loading import load_tokenizer


@step(cache_policy=cache_policy(__name__))
def format_records(
    dataset: RecordSet,
    model_config: ModelConfig,
    template_config: TemplateConfig,
    base_dir: str,
    local_files_fingerprint: str,
    num_examples: int = 3,
) -> tuple[Annotated[str, "chat_template"], Annotated[MarkdownString, "formatted_examples"]]:
    """`local_files_fingerprint` is a cache key only: an edited tokenizer or jinja file at the
    same path re-runs formatting and everything downstream of it."""
    tokenizer = load_tokenizer(model_config, base_dir)
    template = resolve_chat_template(tokenizer, template_config, base_dir)
    tokenizer.chat_template = template
    lines = [
        "# Formatted examples",
        "",
        f"Template source: `{template_config.jinja_path or template_config.name}`",
        "",
    ]
    # The same rendering as training (system folding, alpaca input), not the raw template.
    for text in formatted_examples(dataset.splits.get("train", []), tokenizer, num_examples):
        lines += ["```", text, "```", ""]
    return template, MarkdownString("\n".join(lines))
