"""Preference tuning with TRL (DPO / ORPO) on chosen/rejected pairs.

The pairs are tokenized here, with the chat template chosen by format_records.
"""

from __future__ import annotations

from typing import Annotated

from zenml import step

from materializers.model_artifact_materializer import ModelArtifactMaterializer
from steps._caching import cache_policy
from steps._training import run_training
from tuneline.artifacts import ModelArtifact
from tuneline.config import TrainStage
from tuneline.data.records import RecordSet


@step(output_materializers=ModelArtifactMaterializer, cache_policy=cache_policy(__name__))
def train_preferences(
    dataset: RecordSet,
    chat_template: str,
    config: TrainStage,
    fingerprints: dict[str, str],
) -> Annotated[ModelArtifact, "model"]:
    return run_training(config.project(), dataset, chat_template, fingerprints)
