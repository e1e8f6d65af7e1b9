"""`data:` section: where records come from, their shape, splits and validation policy."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from tuneline.config.base import Section

Shape = Literal["auto", "alpaca", "chat", "sharegpt", "prompt_completion", "text", "preference"]


class SourceConfig(Section):
    """One data source: exactly one of path, hub or records."""

    path: str | list[str] | None = Field(
        default=None, description="File, glob, list of files or directory (jsonl/json/csv/parquet)."
    )
    hub: str | None = Field(default=None, description="Hugging Face dataset name.")
    subset: str | None = Field(default=None, description="Hub config/subset name.")
    split: str | None = Field(default=None, description="Source split to read (hub or directory).")
    revision: str | None = Field(default=None, description="Pinned hub revision.")
    records: list[dict[str, Any]] | None = Field(default=None, description="Inline records.")
    format: Shape = "auto"
    columns: dict[str, str] = Field(
        default_factory=dict, description="Map canonical field -> column name in this source."
    )
    role_map: dict[str, str] = Field(
        default_factory=dict, description="Map source role names to user/assistant/system."
    )
    weight: float = Field(default=1.0, gt=0)
    max_samples: int | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _exactly_one(self) -> SourceConfig:
        given = [k for k in ("path", "hub", "records") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"a data source needs exactly one of path, hub, records (got {given or 'none'})")
        return self


class DataConfig(Section):
    path: str | list[str] | None = Field(
        default=None, description="Shortcut for a single local source (file, glob, list, directory)."
    )
    sources: list[SourceConfig] = Field(default_factory=list)
    format: Shape = Field(default="auto", description="Shape for data.path (sources set their own).")
    columns: dict[str, str] = Field(default_factory=dict)
    validation_split: float = Field(default=0.1, ge=0, lt=1)
    test_split: float = Field(default=0.0, ge=0, lt=1)
    use_source_splits: bool = Field(
        default=True, description="Use the source's own validation/test splits when it has them."
    )
    seed: int = 42
    shuffle: bool = True
    dedup: bool = True
    on_error: Literal["raise", "skip"] = "raise"
    max_skip_fraction: float = Field(default=0.05, ge=0, le=1)
    system_prompt: str | None = Field(
        default=None, description="Added as the system turn to records that have none."
    )

    @model_validator(mode="after")
    def _some_source(self) -> DataConfig:
        if self.path is None and not self.sources:
            raise ValueError("set data.path or data.sources")
        if self.validation_split + self.test_split >= 1:
            raise ValueError("data.validation_split + data.test_split must be below 1")
        return self

    def all_sources(self) -> list[SourceConfig]:
        """data.path is sugar for one source; this gives the full list either way."""
        out = list(self.sources)
        if self.path is not None:
            out.insert(0, SourceConfig(path=self.path, format=self.format, columns=self.columns))
        return out
