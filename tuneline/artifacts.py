"""Artifact types passed between steps that are not plain data.

A trained model is a directory of files (adapter or full weights, tokenizer,
metadata). Wrapping the path in a type lets a materializer copy the directory
into durable storage and hand later steps a local copy.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class ModelArtifact:
    path: str  # local directory with the saved model/adapter + tokenizer
    method: str = "lora"
    base_model: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    # True when `path` is scratch space: once copied to the artifact store it is deleted.
    scratch: bool = False

    def info(self) -> dict[str, Any]:
        return {"method": self.method, "base_model": self.base_model, "metrics": self.metrics}

    @classmethod
    def from_dir(cls, path: str) -> ModelArtifact:
        meta_file = Path(path) / "tuneline_model.json"
        meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
        return cls(
            path=path,
            method=meta.get("method", ""),
            base_model=meta.get("base_model", ""),
            metrics=meta.get("metrics", {}),
        )

    def write_meta(self) -> None:
        (Path(self.path) / "tuneline_model.json").write_text(json.dumps(self.info(), indent=2, default=str))
