"""Every source type reads to the same records; mixing, max_samples and lineage are exact."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tuneline.config import DataConfig, SourceConfig
from tuneline.data import load_records
from tuneline.errors import DataError

ROWS = [{"instruction": f"question {i}", "input": "", "output": f"answer {i}"} for i in range(30)]


def _expected_contents(rows=ROWS) -> set[tuple[str, str]]:
    return {(r["instruction"], r["output"]) for r in rows}


def _contents(rs) -> set[tuple[str, str]]:
    return {
        (r.messages[-2]["content"], r.messages[-1]["content"]) for recs in rs.splits.values() for r in recs
    }


def _write(path: Path, rows: list[dict], fmt: str) -> Path:
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif fmt == "json":
        path.write_text(json.dumps(rows, indent=2))
    elif fmt == "csv":
        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    elif fmt == "parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    elif fmt == "jsonl.gz":
        path.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode()))
    return path


@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv", "parquet", "jsonl.gz"])
def test_file_formats_round_trip(tmp_path, fmt):
    f = _write(tmp_path / f"data.{fmt}", ROWS, fmt)
    rs = load_records(DataConfig(path=f.name, validation_split=0.2), str(tmp_path))
    assert _contents(rs) == _expected_contents()
    assert sum(len(v) for v in rs.splits.values()) == 30
    r = rs.splits["train"][0]
    assert r.kind == "chat" and [m["role"] for m in r.messages] == ["user", "assistant"]
    unit = "row" if fmt in ("csv", "parquet") else "line"
    assert r.meta["source"] == f"data.{fmt}" and r.meta["shape"] == "alpaca"
    lines = sorted(r.meta["line"] for v in rs.splits.values() for r in v)
    expected = {"jsonl": 1, "jsonl.gz": 1, "csv": 1, "parquet": 1, "json": 2}[fmt]
    assert lines[0] == expected, unit
    assert rs.info["sources"][0]["files"][0]["sha256"]


def test_csv_cells_holding_message_lists(tmp_path):
    f = tmp_path / "chat.csv"
    msgs = [{"role": "user", "content": "hi, you"}, {"role": "assistant", "content": "hello"}]
    with f.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["messages"])
        w.writerow([json.dumps(msgs)])
    rs = load_records(DataConfig(path=str(f), validation_split=0), str(tmp_path))
    assert rs.splits["train"][0].messages == msgs


def test_glob_list_and_directory(tmp_path):
    d = tmp_path / "shards"
    d.mkdir()
    _write(d / "part-0.jsonl", ROWS[:10], "jsonl")
    _write(d / "part-1.json", ROWS[10:20], "json")
    _write(d / "part-2.parquet", ROWS[20:], "parquet")
    (d / "README.md").write_text("not data")
    (d / "dataset_info.json").write_text("{}")
    for path in ("shards/*.jsonl", ["shards/part-0.jsonl", "shards/part-1.json"], "shards"):
        rs = load_records(DataConfig(path=path, validation_split=0), str(tmp_path))
        n = {str: 10, list: 20}.get(type(path), 30) if path != "shards" else 30
        assert len(rs.splits["train"]) == n, path
    assert {f["path"] for f in rs.info["sources"][0]["files"]} == {
        "shards/part-0.jsonl",
        "shards/part-1.json",
        "shards/part-2.parquet",
    }


def test_directory_with_split_files_uses_source_splits(tmp_path):
    d = tmp_path / "ds"
    d.mkdir()
    _write(d / "train.jsonl", ROWS[:20], "jsonl")
    _write(d / "validation.jsonl", ROWS[20:25], "jsonl")
    _write(d / "test.jsonl", ROWS[25:], "jsonl")
    rs = load_records(DataConfig(path="ds", validation_split=0.5), str(tmp_path))
    assert {k: len(v) for k, v in rs.splits.items()} == {"train": 20, "validation": 5, "test": 5}
    assert _contents(type(rs)(splits={"v": rs.splits["validation"]})) == _expected_contents(ROWS[20:25])
    # Opting out pools every file and splits by ratio instead.
    rs = load_records(DataConfig(path="ds", use_source_splits=False, validation_split=0.2), str(tmp_path))
    assert "test" not in rs.splits and sum(len(v) for v in rs.splits.values()) == 30
    # split: picks only that split's files.
    rs = load_records(
        DataConfig(sources=[SourceConfig(path="ds", split="test")], validation_split=0), str(tmp_path)
    )
    assert len(rs.splits["train"]) == 5


def test_inline_records_from_yaml(tmp_path):
    import yaml

    data = yaml.safe_load(
        """
data:
  validation_split: 0
  sources:
    - records:
        - {prompt: "2+2?", completion: "4"}
        - {prompt: "3+3?", completion: "6"}
"""
    )["data"]
    rs = load_records(DataConfig.model_validate(data), str(tmp_path))
    recs = sorted(rs.splits["train"], key=lambda r: r.meta["line"])
    assert [r.messages[-1]["content"] for r in recs] == ["4", "6"]
    assert recs[0].meta == {"source": "data.sources[0].records", "line": 0, "shape": "prompt_completion"}


def test_inline_record_errors_name_the_config_key(tmp_path):
    cfg = DataConfig(sources=[SourceConfig(records=[{"text": "ok"}, {"text": ""}])])
    with pytest.raises(DataError, match=r"data\.sources\[0\]\.records:index 1 text: text is empty"):
        load_records(cfg, str(tmp_path))


def test_hub_code_path_on_local_directory(tmp_path):
    """`hub:` goes through datasets.load_dataset; a local directory makes it work offline."""
    d = tmp_path / "local_hub"
    d.mkdir()
    _write(d / "train.jsonl", ROWS[:24], "jsonl")
    _write(d / "test.jsonl", ROWS[24:], "jsonl")
    rs = load_records(
        DataConfig(sources=[SourceConfig(hub="local_hub")], validation_split=0.1), str(tmp_path)
    )
    assert len(rs.splits["test"]) == 6
    assert sum(len(v) for v in rs.splits.values()) == 30
    r = rs.splits["test"][0]
    assert r.meta["source"] == "local_hub[test]" and r.meta["shape"] == "alpaca"
    src = rs.info["sources"][0]
    assert src["type"] == "hub" and src["hub"] == "local_hub" and src["local"] is True
    # An explicit split reads only that split (index-addressed problems too).
    _write(d / "train.jsonl", [*ROWS[:3], {"instruction": "x", "output": ""}], "jsonl")
    with pytest.raises(DataError, match=r"local_hub\[train\]:index 3 output"):
        load_records(DataConfig(sources=[SourceConfig(hub="local_hub", split="train")]), str(tmp_path))


def test_hub_save_to_disk_directory(tmp_path):
    import datasets

    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "saved"))
    rs = load_records(DataConfig(sources=[SourceConfig(hub="saved")], validation_split=0), str(tmp_path))
    assert _contents(rs) == _expected_contents()


def test_hub_missing_dataset_is_a_data_error(tmp_path):
    cfg = DataConfig(sources=[SourceConfig(hub="no-such-org/no-such-dataset-xyz", revision="abc")])
    with pytest.raises(
        DataError, match=r"data\.sources\[0\]\.hub: cannot load dataset 'no-such-org/no-such-dataset-xyz'"
    ):
        load_records(cfg, str(tmp_path))


def test_mixing_with_weights_and_max_samples(tmp_path):
    a = _write(tmp_path / "a.jsonl", ROWS[:10], "jsonl")
    b_rows = [{"prompt": f"p{i}", "completion": f"c{i}"} for i in range(40)]
    b = _write(tmp_path / "b.jsonl", b_rows, "jsonl")
    cfg = DataConfig(
        sources=[
            SourceConfig(path=a.name, weight=2.0),
            SourceConfig(path=b.name, weight=0.5, max_samples=20),
        ],
        validation_split=0,
        seed=7,
    )
    rs = load_records(cfg, str(tmp_path))
    train = rs.splits["train"]
    by_src = {}
    for r in train:
        by_src.setdefault(r.meta["source"], []).append(r)
    assert len(by_src["a.jsonl"]) == 20  # every record exactly twice
    assert len({r.content_key() for r in by_src["a.jsonl"]}) == 10
    assert len(by_src["b.jsonl"]) == 10  # half of the first 20
    assert {r.meta["line"] for r in by_src["b.jsonl"]} <= set(range(1, 21))
    assert rs.info["max_samples"]["data.sources[1]"] == {"kept": 20, "cut": 20}
    assert rs.info["weights"]["data.sources[0]"] == {"weight": 2.0, "train_unique": 10, "train_weighted": 20}
    assert rs.info["by_source"]["train"] == {"data.sources[0]": 20, "data.sources[1]": 10}
    # Seeded: same config, same order; another seed, another order.
    again = load_records(cfg, str(tmp_path))
    assert [r.content_key() for r in again.splits["train"]] == [r.content_key() for r in train]
    other = load_records(cfg.model_copy(update={"seed": 8}), str(tmp_path))
    assert [r.content_key() for r in other.splits["train"]] != [r.content_key() for r in train]


def test_shuffle_off_keeps_file_order(tmp_path):
    f = _write(tmp_path / "a.jsonl", ROWS, "jsonl")
    rs = load_records(DataConfig(path=f.name, shuffle=False, validation_split=0), str(tmp_path))
    assert [r.meta["line"] for r in rs.splits["train"]] == list(range(1, 31))


def test_mixed_kinds_across_sources_fail(tmp_path):
    _write(tmp_path / "a.jsonl", ROWS[:3], "jsonl")
    _write(tmp_path / "t.jsonl", [{"text": "doc"}], "jsonl")
    cfg = DataConfig(sources=[SourceConfig(path="a.jsonl"), SourceConfig(path="t.jsonl")])
    with pytest.raises(DataError, match="different record kinds"):
        load_records(cfg, str(tmp_path))


def test_hub_split_names_and_eval_split(tmp_path):
    """ultrachat-style splits: train_sft is train, test_sft the held-out set, train_gen unused."""
    import datasets

    chat = [
        {"messages": [{"role": "user", "content": f"u{i}"}, {"role": "assistant", "content": f"a{i}"}]}
        for i in range(12)
    ]
    datasets.DatasetDict(
        {
            "train_sft": datasets.Dataset.from_list(chat[:8]),
            "test_sft": datasets.Dataset.from_list(chat[8:10]),
            "train_gen": datasets.Dataset.from_list(chat[10:]),
        }
    ).save_to_disk(str(tmp_path / "uc"))
    rs = load_records(DataConfig(sources=[SourceConfig(hub="uc")], validation_split=0), str(tmp_path))
    assert {k: len(v) for k, v in rs.splits.items()} == {"train": 8, "validation": 0, "test": 2}
    assert rs.info["sources"][0]["ignored_splits"] == ["train_gen"]
    cfg = DataConfig(sources=[SourceConfig(hub="uc", split="train_sft", eval_split="test_sft")])
    rs = load_records(cfg, str(tmp_path))
    assert {k: len(v) for k, v in rs.splits.items()} == {"train": 8, "validation": 2}
    assert {r.meta["source"] for r in rs.splits["validation"]} == {"uc[test_sft]"}


def test_config_rejects_unknown_columns_and_role_targets():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="did you mean 'prompt'"):
        DataConfig(path="x", columns={"promt": "question"})
    with pytest.raises(ValidationError, match="target must be one of"):
        SourceConfig(path="x", role_map={"tool": "function"})
