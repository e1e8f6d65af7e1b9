"""`data:` section: where records come from, their shape, splits and validation policy."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from tuneline.config.base import Section

Shape = Literal["auto", "alpaca", "chat", "sharegpt", "prompt_completion", "text", "preference"]

# Canonical field names `columns:` may map (message-level: role, content).
CANONICAL_COLUMNS = (
    "instruction",
    "input",
    "context",
    "output",
    "response",
    "history",
    "system",
    "messages",
    "conversations",
    "role",
    "content",
    "prompt",
    "completion",
    "text",
    "chosen",
    "rejected",
    "tools",
    "label",
)
ROLE_TARGETS = ("system", "user", "assistant", "drop")


def _check_columns(v: dict[str, str]) -> dict[str, str]:
    """Keys are canonical names: a typo would otherwise silently map nothing."""
    import difflib

    for k in v:
        if k not in CANONICAL_COLUMNS:
            close = difflib.get_close_matches(k, CANONICAL_COLUMNS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; valid: {', '.join(CANONICAL_COLUMNS)}"
            raise ValueError(
                f"columns key {k!r} is not a canonical field (columns map canonical -> yours){hint}"
            )
    return v


def _check_roles(v: dict[str, str]) -> dict[str, str]:
    for src, dst in v.items():
        if dst not in ROLE_TARGETS:
            raise ValueError(f"role_map {src!r} -> {dst!r}: target must be one of {', '.join(ROLE_TARGETS)}")
    return v


class SourceConfig(Section):
    """One data source: exactly one of path, hub or records."""

    path: str | list[str] | None = Field(
        default=None, description="File, glob, list of files or directory (jsonl/json/csv/parquet)."
    )
    hub: str | None = Field(default=None, description="Hugging Face dataset name.")
    subset: str | None = Field(default=None, description="Hub config/subset name.")
    split: str | None = Field(
        default=None,
        description="Source split to read as training data (hub split name, or the split files of a directory).",
    )
    eval_split: str | None = Field(
        default=None, description="Source split to use as the validation split (e.g. test_sft for ultrachat)."
    )
    revision: str | None = Field(default=None, description="Pinned hub revision.")
    records: list[dict[str, Any]] | None = Field(default=None, description="Inline records.")
    format: Shape = "auto"
    columns: dict[str, str] = Field(
        default_factory=dict, description="Map canonical field -> column name in this source."
    )
    role_map: dict[str, str] = Field(
        default_factory=dict, description="Map source role names to user/assistant/system (or drop)."
    )
    weight: float = Field(
        default=1.0,
        gt=0,
        description="Multiplies this source's train records (2 = twice, 0.5 = a seeded half).",
    )
    max_samples: int | None = Field(
        default=None, gt=0, description="Keep the first N valid, unique records of this source."
    )

    _columns = field_validator("columns")(_check_columns)
    _roles = field_validator("role_map")(_check_roles)

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
    role_map: dict[str, str] = Field(default_factory=dict, description="role_map for data.path.")
    max_samples: int | None = Field(default=None, gt=0, description="max_samples for data.path.")
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

    _columns = field_validator("columns")(_check_columns)
    _roles = field_validator("role_map")(_check_roles)

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
            out.insert(
                0,
                SourceConfig(
                    path=self.path,
                    format=self.format,
                    columns=self.columns,
                    role_map=self.role_map,
                    max_samples=self.max_samples,
                ),
            )
        return out
