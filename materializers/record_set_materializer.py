"""RecordSet <-> one JSONL file per split plus info.json, readable without tuneline."""

from __future__ import annotations

import json
import os
from typing import Any, ClassVar

from zenml.enums import ArtifactType, VisualizationType
from zenml.io import fileio
from zenml.materializers.base_materializer import BaseMaterializer

from tuneline.data.records import Record, RecordSet


class RecordSetMaterializer(BaseMaterializer):
    ASSOCIATED_TYPES: ClassVar[tuple[type[Any], ...]] = (RecordSet,)
    ASSOCIATED_ARTIFACT_TYPE: ClassVar[ArtifactType] = ArtifactType.DATA

    def save(self, data: RecordSet) -> None:
        for name, records in data.splits.items():
            with fileio.open(os.path.join(self.uri, f"{name}.jsonl"), "w") as f:
                for r in records:
                    f.write(json.dumps(r.to_dict(), ensure_ascii=False) + "\n")
        with fileio.open(os.path.join(self.uri, "info.json"), "w") as f:
            json.dump({"splits": list(data.splits), "info": data.info}, f, indent=2, default=str)

    def load(self, data_type: type[Any]) -> RecordSet:
        with fileio.open(os.path.join(self.uri, "info.json"), "r") as f:
            meta = json.load(f)
        splits = {}
        for name in meta["splits"]:
            with fileio.open(os.path.join(self.uri, f"{name}.jsonl"), "r") as f:
                splits[name] = [Record.from_dict(json.loads(line)) for line in f if line.strip()]
        return RecordSet(splits=splits, info=meta.get("info", {}))

    def extract_metadata(self, data: RecordSet) -> dict[str, Any]:
        meta: dict[str, Any] = {f"num_{k}": len(v) for k, v in data.splits.items()}
        meta.update({f"fingerprint_{k}": v for k, v in data.fingerprints.items()})
        meta["kind"] = data.kind
        return meta

    def save_visualizations(self, data: RecordSet) -> dict[str, VisualizationType]:
        from tuneline.data import render_summary_html, summarize

        path = os.path.join(self.uri, "summary.html")
        with fileio.open(path, "w") as f:
            f.write(render_summary_html(summarize(data)))
        return {path: VisualizationType.HTML}
