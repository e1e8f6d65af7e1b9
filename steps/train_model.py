"""Supervised fine-tuning (lora / qlora / full) and continued pretraining."""

from __future__ import annotations

from typing import Annotated

from zenml import step

from materializers.model_artifact_materializer import ModelArtifactMaterializer
from steps._caching import cache_policy
from steps._training import run_training
from tuneline.artifacts import ModelArtifact
from tuneline.config import TrainStage
from tuneline.tokenize import TokenizedDataset


@step(output_materializers=ModelArtifactMaterializer, cache_policy=cache_policy(__name__))
def train_model(
    tokenized: TokenizedDataset,
    chat_template: str,
    config: TrainStage,
    fingerprints: dict[str, str],
) -> Annotated[ModelArtifact, "model"]:
    return run_training(config.project(), tokenized, chat_template, fingerprints)
