"""Preference tuning (DPO / ORPO): load -> format -> train -> evaluate -> register.

TRL tokenizes preference pairs itself with the chat template chosen by
format_records, so there is no separate tokenize step.
"""

from __future__ import annotations

from zenml import pipeline

from pipelines import EVAL_SECTIONS, REGISTER_SECTIONS, TRAIN_SECTIONS, sections
from steps.evaluate_preferences import evaluate_preferences
from steps.format_records import format_records
from steps.load_dataset import load_dataset
from steps.register_model import register_model
from steps.train_preferences import train_preferences


@pipeline(name="tuneline_preference")
def preference_pipeline(config: dict, fingerprints: dict, kind: str = "preference") -> None:
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
    model = train_preferences(
        dataset=dataset,
        chat_template=chat_template,
        config=sections(config, TRAIN_SECTIONS),
        fingerprints=fingerprints,
    )
    report = evaluate_preferences(model=model, dataset=dataset, config=sections(config, EVAL_SECTIONS))
    register_model(
        model=model, eval_report=report, dataset=dataset, config=sections(config, REGISTER_SECTIONS)
    )
