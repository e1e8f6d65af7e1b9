"""TokenizedDataset <-> one Parquet file per split (list<int32> columns) plus JSON sidecars."""

from __future__ import annotations

import os
from typing import Any, ClassVar

from zenml.enums import ArtifactType, VisualizationType
from zenml.io import fileio
from zenml.materializers.base_materializer import BaseMaterializer

from tuneline.tokenize import TokenizedDataset, load_tokenized, save_tokenized


class TokenizedDatasetMaterializer(BaseMaterializer):
    ASSOCIATED_TYPES: ClassVar[tuple[type[Any], ...]] = (TokenizedDataset,)
    ASSOCIATED_ARTIFACT_TYPE: ClassVar[ArtifactType] = ArtifactType.DATA

    def save(self, data: TokenizedDataset) -> None:
        save_tokenized(data, self.uri, opener=fileio.open)

    def load(self, data_type: type[Any]) -> TokenizedDataset:
        return load_tokenized(self.uri, opener=fileio.open)

    def extract_metadata(self, data: TokenizedDataset) -> dict[str, Any]:
        meta: dict[str, Any] = {f"rows_{k}": len(v) for k, v in data.splits.items()}
        meta.update({f"tokens_{k}": v.num_tokens for k, v in data.splits.items()})
        meta.update({f"supervised_tokens_{k}": v.num_supervised for k, v in data.splits.items()})
        meta["packed"] = data.packed
        for k in ("padding_efficiency",):
            if isinstance(data.stats.get(k), (int, float)):
                meta[k] = float(data.stats[k])
        return meta

    def save_visualizations(self, data: TokenizedDataset) -> dict[str, VisualizationType]:
        lines = ["# Tokenization audit", ""]
        for name, s in data.splits.items():
            lines.append(f"- **{name}**: {len(s)} rows, {s.num_tokens} tokens, {s.num_supervised} supervised")
        for i, ex in enumerate(data.audit):
            lines += [
                "",
                f"## Example {i + 1}",
                "",
                "```",
                str(ex.get("rendered", ex.get("text", ""))),
                "```",
            ]
        path = os.path.join(self.uri, "audit.md")
        with fileio.open(path, "w") as f:
            f.write("\n".join(lines))
        return {path: VisualizationType.MARKDOWN}
