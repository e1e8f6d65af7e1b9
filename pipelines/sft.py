"""Supervised fine-tuning and continued pretraining: load -> format -> tokenize -> train -> evaluate -> register."""

from __future__ import annotations

from zenml import pipeline

from pipelines import EVAL_SECTIONS, REGISTER_SECTIONS, TRAIN_SECTIONS, sections
from steps.evaluate_model import evaluate_model
from steps.format_records import format_records
from steps.load_dataset import load_dataset
from steps.register_model import register_model
from steps.tokenize_dataset import tokenize_dataset
from steps.train_model import train_model


@pipeline(name="tuneline_sft")
def sft_pipeline(config: dict, fingerprints: dict, kind: str = "chat") -> None:
    base_dir = config["base_dir"]
    dataset = load_dataset(
        data_config=config["data"], base_dir=base_dir, source_fingerprint=fingerprints["data"], kind=kind
    )
    chat_template, _ = format_records(
        dataset=dataset,
        model_config=config["model"],
        template_config=config["template"],
        base_dir=base_dir,
        local_files_fingerprint=fingerprints["local_files"],
    )
    tokenized = tokenize_dataset(
        dataset=dataset,
        chat_template=chat_template,
        model_config=config["model"],
        template_config=config["template"],
        tokenize_config=config["tokenize"],
        base_dir=base_dir,
    )
    model = train_model(
        tokenized=tokenized,
        chat_template=chat_template,
        config=sections(config, TRAIN_SECTIONS),
        fingerprints=fingerprints,
    )
    report = evaluate_model(
        model=model, tokenized=tokenized, dataset=dataset, config=sections(config, EVAL_SECTIONS)
    )
    register_model(
        model=model, eval_report=report, dataset=dataset, config=sections(config, REGISTER_SECTIONS)
    )
