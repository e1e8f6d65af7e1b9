"""ModelArtifact <-> the model directory copied into the artifact store.

The copy is what makes the trained model durable: the worker's scratch disk can
vanish after the step, the artifact store cannot.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any, ClassVar

from zenml.enums import ArtifactType
from zenml.io import fileio
from zenml.materializers.base_materializer import BaseMaterializer
from zenml.utils import io_utils

from tuneline.artifacts import ModelArtifact


class ModelArtifactMaterializer(BaseMaterializer):
    ASSOCIATED_TYPES: ClassVar[tuple[type[Any], ...]] = (ModelArtifact,)
    ASSOCIATED_ARTIFACT_TYPE: ClassVar[ArtifactType] = ArtifactType.MODEL

    def save(self, data: ModelArtifact) -> None:
        data.write_meta()
        io_utils.copy_dir(data.path, os.path.join(self.uri, "model"), overwrite=True)
        if data.scratch:
            # The copy in the artifact store is the model now; a scratch copy per run would fill the disk.
            shutil.rmtree(data.path, ignore_errors=True)

    def load(self, data_type: type[Any]) -> ModelArtifact:
        src = os.path.join(self.uri, "model")
        if self.artifact_store.flavor == "local":
            return ModelArtifact.from_dir(src)
        with self.get_temporary_directory(delete_at_exit=False) as tmp:
            io_utils.copy_dir(src, tmp, overwrite=True)
            return ModelArtifact.from_dir(tmp)

    def extract_metadata(self, data: ModelArtifact) -> dict[str, Any]:
        meta: dict[str, Any] = {"method": data.method, "base_model": data.base_model}
        size = 0
        stored = os.path.join(self.uri, "model")
        for root, _, files in fileio.walk(stored):
            size += sum(fileio.size(os.path.join(str(root), str(f))) or 0 for f in files)
        meta["size_bytes"] = size
        meta["size_mb"] = round(size / 2**20, 3)
        for k, v in data.metrics.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                meta[k] = v
        return meta

    def save_visualizations(self, data: ModelArtifact) -> dict[str, Any]:
        path = os.path.join(self.uri, "model", "tuneline_model.json")
        if fileio.exists(path):
            from zenml.enums import VisualizationType

            md = os.path.join(self.uri, "model_card.md")
            with fileio.open(md, "w") as f:
                f.write("# Model\n\n```json\n" + json.dumps(data.info(), indent=2, default=str) + "\n```\n")
            return {md: VisualizationType.MARKDOWN}
        return {}
