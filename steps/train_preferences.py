"""Preference tuning with TRL (DPO / ORPO) on chosen/rejected pairs.

TRL tokenizes the pairs itself, with the chat template chosen by format_records.
"""

from __future__ import annotations

from typing import Annotated

from zenml import step

from materializers.model_artifact_materializer import ModelArtifactMaterializer
from steps._training import run_training
from tuneline.artifacts import ModelArtifact
from tuneline.config import ProjectConfig
from tuneline.data.records import RecordSet


@step(output_materializers=ModelArtifactMaterializer)
def train_preferences(
    dataset: RecordSet,
    chat_template: str,
    config: dict,
    fingerprints: dict,
) -> Annotated[ModelArtifact, "model"]:
    return run_training(ProjectConfig.model_validate(config), dataset, chat_template, fingerprints)
