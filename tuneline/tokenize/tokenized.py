"""Tokenized training data exactly as the trainer will see it.

Kept apart from the tokenizer code so materializers, the trainer and the preview
share one definition without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class TokenizedSplit:
    """Rows of token ids with labels (-100 = not supervised).

    When packed, each row holds several samples and `position_ids` restart at 0 at
    every sample boundary; padding-free attention uses them to keep samples apart.
    """

    input_ids: list[list[int]]
    labels: list[list[int]]
    position_ids: list[list[int]] | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    # Unpacked: the input record each row came from (audit/preview can show its meta).
    record_index: list[int] | None = None

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def num_tokens(self) -> int:
        return sum(len(r) for r in self.input_ids)

    @property
    def num_supervised(self) -> int:
        return sum(sum(1 for t in r if t != -100) for r in self.labels)


@dataclass
class TokenizedDataset:
    splits: dict[str, TokenizedSplit]
    stats: dict[str, Any] = field(default_factory=dict)
    audit: list[dict[str, Any]] = field(default_factory=list)  # rendered examples + mask stats
    chat_template: str | None = None  # the template the ids were rendered with

    @property
    def packed(self) -> bool:
        return any(s.position_ids is not None for s in self.splits.values())


def split_to_arrow(split: TokenizedSplit) -> Any:
    """One Arrow table per split (list<int32> columns): compact, and readable without tuneline."""
    import pyarrow as pa

    ids = pa.list_(pa.int32())
    cols = {"input_ids": pa.array(split.input_ids, type=ids), "labels": pa.array(split.labels, type=ids)}
    if split.position_ids is not None:
        cols["position_ids"] = pa.array(split.position_ids, type=ids)
    if split.record_index is not None:
        cols["record_index"] = pa.array(split.record_index, type=pa.int64())
    return pa.table(cols)


def split_from_arrow(table: Any, stats: dict[str, Any] | None = None) -> TokenizedSplit:
    cols = table.to_pydict()
    return TokenizedSplit(
        input_ids=cols["input_ids"],
        labels=cols["labels"],
        position_ids=cols.get("position_ids"),
        stats=dict(stats or {}),
        record_index=cols.get("record_index"),
    )
