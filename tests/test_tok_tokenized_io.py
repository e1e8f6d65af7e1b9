"""One on-disk layout for a TokenizedDataset, shared by the ZenML materializer and distributed workers."""

from __future__ import annotations

import json

from tuneline.tokenize import TokenizedDataset, TokenizedSplit, load_tokenized, save_tokenized
from tuneline.train.distributed_worker import load_data, save_data


def _dataset() -> TokenizedDataset:
    packed = TokenizedSplit([[1, 5, 6, 1, 7]], [[-100, 5, 6, -100, 7]], [[0, 1, 2, 0, 1]], {"n_out": 1})
    plain = TokenizedSplit([[1, 2], [1, 3, 4]], [[-100, 2], [-100, 3, 4]], None, {"n_out": 2}, [0, 2])
    return TokenizedDataset(
        splits={"train": packed, "validation": plain},
        stats={"packing": True, "tokens_read": 9},
        audit=[{"row": 0, "rendered": "⟦x⟧"}],
        chat_template="{{ messages }}",
    )


def _same(a: TokenizedDataset, b: TokenizedDataset) -> None:
    assert (a.stats, a.audit, a.chat_template) == (b.stats, b.audit, b.chat_template)
    for name, s in a.splits.items():
        t = b.splits[name]
        assert (s.input_ids, s.labels, s.position_ids, s.record_index, s.stats) == (
            t.input_ids,
            t.labels,
            t.position_ids,
            t.record_index,
            t.stats,
        )


def test_save_and_load_round_trip(tmp_path):
    ds = _dataset()
    save_tokenized(ds, str(tmp_path))
    assert json.loads((tmp_path / "meta.json").read_text())["kind"] == "tokenized"
    _same(ds, load_tokenized(str(tmp_path)))


def test_distributed_workers_use_the_same_layout(tmp_path):
    ds = _dataset()
    save_data(ds, tmp_path / "w")
    _same(ds, load_tokenized(str(tmp_path / "w")))
    _same(ds, load_data(tmp_path / "w"))
