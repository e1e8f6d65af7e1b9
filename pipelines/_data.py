"""The data steps every pipeline starts with, wired once: load -> format -> tokenize.

Plain functions called inside a `@pipeline` body, so each pipeline states only where it differs.
"""

from __future__ import annotations

from typing import Any

from steps.format_records import format_records
from steps.load_dataset import load_dataset
from steps.tokenize_dataset import tokenize_dataset
from tuneline.config import PipelineConfig


def load(config: PipelineConfig, fingerprints: dict[str, str]) -> Any:
    return load_dataset(
        data_config=config.data,
        base_dir=config.base_dir,
        source_fingerprint=fingerprints["data"],
        kind=config.kind,
    )


def format_for(dataset: Any, config: PipelineConfig, fingerprints: dict[str, str]) -> Any:
    """The chat template chosen for this model (the formatted examples go to the dashboard)."""
    chat_template, _ = format_records(
        dataset=dataset,
        model_config=config.model,
        template_config=config.template,
        base_dir=config.base_dir,
        local_files_fingerprint=fingerprints["local_files"],
    )
    return chat_template


def tokenize(dataset: Any, chat_template: Any, config: PipelineConfig) -> Any:
    return tokenize_dataset(
        dataset=dataset,
        chat_template=chat_template,
        model_config=config.model,
        template_config=config.template,
        tokenize_config=config.tokenize,
        base_dir=config.base_dir,
    )
