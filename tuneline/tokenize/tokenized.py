"""Tokenized training data exactly as the trainer will see it.

Kept apart from the tokenizer code so materializers, the trainer and the preview
share one definition without importing each other.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any

# Label value the loss ignores (torch cross_entropy's and transformers' default ignore_index).
IGNORE_INDEX = -100


@dataclass
class TokenizedSplit:
    """Rows of token ids with labels (IGNORE_INDEX = not supervised).

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
        return sum(sum(1 for t in r if t != IGNORE_INDEX) for r in self.labels)


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


def save_tokenized(ds: TokenizedDataset, directory: str, *, opener: Callable[..., IO[Any]] = open) -> None:
    """One Parquet file per split plus `meta.json` (stats, audit, template).

    `opener` lets an artifact store with its own file API (remote URIs) write the same layout.
    """
    import pyarrow.parquet as pq

    for name, split in ds.splits.items():
        with opener(os.path.join(directory, f"{name}.parquet"), "wb") as f:
            pq.write_table(split_to_arrow(split), f)
    meta = {
        "kind": "tokenized",
        "splits": {name: s.stats for name, s in ds.splits.items()},
        "stats": ds.stats,
        "audit": ds.audit,
        "chat_template": ds.chat_template,
    }
    with opener(os.path.join(directory, "meta.json"), "w") as f:
        f.write(json.dumps(meta, indent=1, default=str))


def load_tokenized(directory: str, *, opener: Callable[..., IO[Any]] = open) -> TokenizedDataset:
    import pyarrow.parquet as pq

    with opener(os.path.join(directory, "meta.json"), "r") as f:
        meta = json.loads(f.read())
    splits = {}
    for name, stats in meta["splits"].items():
        with opener(os.path.join(directory, f"{name}.parquet"), "rb") as f:
            splits[name] = split_from_arrow(pq.read_table(f), stats)
    return TokenizedDataset(
        splits=splits,
        stats=meta.get("stats", {}),
        audit=meta.get("audit", []),
        chat_template=meta.get("chat_template"),
    )
