"""Supervised fine-tuning (lora / qlora / full) and continued pretraining."""

from __future__ import annotations

from typing import Annotated

from zenml import step

from materializers.model_artifact_materializer import ModelArtifactMaterializer
from steps._training import run_training
from tuneline.artifacts import ModelArtifact
from tuneline.config import ProjectConfig
from tuneline.tokenize import TokenizedDataset


@step(output_materializers=ModelArtifactMaterializer)
def train_model(
    tokenized: TokenizedDataset,
    chat_template: str,
    config: dict,
    fingerprints: dict,
) -> Annotated[ModelArtifact, "model"]:
    return run_training(ProjectConfig.model_validate(config), tokenized, chat_template, fingerprints)
