"""Tokenize with loss masks (and packing) exactly as the trainer will consume it."""

from __future__ import annotations

from typing import Annotated

from zenml import log_metadata, step

from materializers.tokenized_dataset_materializer import TokenizedDatasetMaterializer
from steps._caching import cache_policy
from steps._tracking import active_run, log_params, log_png
from tuneline.config import ModelConfig, TemplateConfig, TokenizeConfig
from tuneline.data import render_summary_html, summarize
from tuneline.data.records import RecordSet
from tuneline.report import plots, stats_params
from tuneline.tokenize import TokenizedDataset, prepare_tokenizer
from tuneline.tokenize import tokenize_dataset as tokenize_records
from tuneline.train.loading import load_tokenizer


@step(output_materializers=TokenizedDatasetMaterializer, cache_policy=cache_policy(__name__))
def tokenize_dataset(
    dataset: RecordSet,
    chat_template: str,
    model_config: ModelConfig,
    template_config: TemplateConfig,
    tokenize_config: TokenizeConfig,
    base_dir: str,
) -> Annotated[TokenizedDataset, "tokenized_dataset"]:
    tokenizer = prepare_tokenizer(load_tokenizer(model_config, base_dir), template_config, base_dir)
    tokenizer.chat_template = chat_template
    tokenized = tokenize_records(dataset, tokenizer, tokenize_config)
    stats = {}
    for split, s in tokenized.splits.items():
        for k, v in s.stats.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                stats[f"tokenize_{split}_{k}"] = v
    for k, v in tokenized.stats.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            stats[f"tokenize_{k}"] = v
    # One-off statistics: params (stats.tokenize.*) and the audit, not one-point metric charts.
    log_params(stats_params("tokenize", tokenized.stats))
    for split, s in tokenized.splits.items():
        log_params(stats_params(f"tokenize.{split}", s.stats))
    if active_run() is not None:
        import mlflow

        audit = {
            "stats": tokenized.stats,
            "splits": {split: s.stats for split, s in tokenized.splits.items()},
            "examples": tokenized.audit,
        }
        mlflow.log_dict(audit, "tokenization/audit.json")
        lengths = {split: [len(ids) for ids in s.input_ids] for split, s in tokenized.splits.items()}
        log_png(
            plots.token_length_histogram(lengths, tokenize_config.max_length, tokenized.packed),
            "plots/token_lengths.png",
        )
        mlflow.log_text(tokenized.chat_template or "", "tokenization/chat_template.jinja")
        # The load step's summary has character lengths only; now the tokenizer is known, add token lengths.
        mlflow.log_text(render_summary_html(summarize(dataset, tokenizer)), "data/summary.html")
    log_metadata(metadata=stats, infer_artifact=True)
    return tokenized
