"""Splits are stable as data grows; dedup, leakage removal and fingerprints are exact."""

from __future__ import annotations

import json
from pathlib import Path

from tuneline.config import DataConfig, SourceConfig
from tuneline.data import load_records, source_fingerprint


def _rows(lo: int, hi: int) -> list[dict]:
    return [{"prompt": f"question {i}", "completion": f"answer {i}"} for i in range(lo, hi)]


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _membership(rs) -> dict[str, str]:
    return {r.messages[-2]["content"]: name for name, recs in rs.splits.items() for r in recs}


def test_split_is_stable_when_the_file_grows(tmp_path):
    f = _write(tmp_path / "d.jsonl", _rows(0, 200))
    cfg = DataConfig(path=f.name, validation_split=0.2, test_split=0.1, seed=3)
    before = _membership(load_records(cfg, str(tmp_path)))
    assert {"train", "validation", "test"} == set(before.values())
    # Append, and also reorder the old lines: membership depends on content, not position.
    _write(f, list(reversed(_rows(0, 200))) + _rows(200, 400))
    after = _membership(load_records(cfg, str(tmp_path)))
    assert all(after[k] == v for k, v in before.items())
    n_val = sum(1 for v in after.values() if v == "validation")
    assert 40 <= n_val <= 120  # about 20% of 400
    # A different seed draws a different split.
    other = _membership(load_records(cfg.model_copy(update={"seed": 4}), str(tmp_path)))
    assert other != after


def test_split_ignores_system_prompt_changes(tmp_path):
    f = _write(tmp_path / "d.jsonl", _rows(0, 100))
    a = load_records(DataConfig(path=f.name), str(tmp_path))
    b = load_records(DataConfig(path=f.name, system_prompt="Be nice."), str(tmp_path))
    assert _membership(a) == _membership(b)
    assert a.fingerprints != b.fingerprints


def test_tiny_dataset_still_gets_a_validation_record(tmp_path):
    f = _write(tmp_path / "d.jsonl", _rows(0, 3))
    rs = load_records(DataConfig(path=f.name, validation_split=0.01), str(tmp_path))
    assert len(rs.splits["validation"]) == 1 and len(rs.splits["train"]) == 2
    assert rs.info["split"]["forced"] == ["validation"]


def test_exact_dedup_and_eval_overlap_removed(tmp_path):
    d = tmp_path / "ds"
    d.mkdir()
    train = _rows(0, 20) + _rows(0, 5)  # 5 exact duplicates
    _write(d / "train.jsonl", train)
    _write(d / "validation.jsonl", _rows(15, 25))  # 5 leak from train
    _write(tmp_path / "extra.jsonl", _rows(18, 22))  # duplicates across sources
    cfg = DataConfig(
        sources=[SourceConfig(path="ds"), SourceConfig(path="extra.jsonl")],
        validation_split=0,
    )
    rs = load_records(cfg, str(tmp_path))
    keys = {name: [r.content_key() for r in recs] for name, recs in rs.splits.items()}
    assert len(keys["train"]) == len(set(keys["train"])) == 22  # 0..19 plus 20, 21 from extra
    assert set(keys["validation"]).isdisjoint(keys["train"])
    assert sorted(r.messages[0]["content"] for r in rs.splits["validation"]) == [
        f"question {i}" for i in range(22, 25)
    ]
    assert rs.info["dedup"]["within_source"] == {"data.sources[0]": 5, "data.sources[1]": 0}
    assert rs.info["dedup"]["within_split"]["train"] == 2  # 18, 19 from extra
    assert rs.info["overlap"]["validation_removed"] == 7  # 15..21 also in train
    # dedup off keeps repeats inside train, but eval leakage is still removed.
    rs = load_records(cfg.model_copy(update={"dedup": False}), str(tmp_path))
    assert len(rs.splits["train"]) == 29
    assert set(r.content_key() for r in rs.splits["validation"]).isdisjoint(
        r.content_key() for r in rs.splits["train"]
    )


def test_prompt_overlap_is_reported(tmp_path):
    d = tmp_path / "ds"
    d.mkdir()
    _write(d / "train.jsonl", _rows(0, 10))
    _write(d / "validation.jsonl", [{"prompt": "question 1", "completion": "another answer"}])
    rs = load_records(DataConfig(path="ds"), str(tmp_path))
    assert rs.info["overlap"]["eval_prompts_in_train"] == 1
    assert len(rs.splits["validation"]) == 1


def test_fingerprints_change_with_file_content_at_same_path(tmp_path):
    f = _write(tmp_path / "d.jsonl", _rows(0, 50))
    cfg = DataConfig(path=f.name)
    sfp1 = source_fingerprint(cfg, str(tmp_path))
    rs1 = load_records(cfg, str(tmp_path))
    assert sfp1 == source_fingerprint(cfg, str(tmp_path)) == rs1.info["source_fingerprint"]
    assert rs1.info["fingerprints"] == rs1.fingerprints
    rows = _rows(0, 50)
    rows[7]["completion"] = "edited"
    _write(f, rows)
    sfp2 = source_fingerprint(cfg, str(tmp_path))
    rs2 = load_records(cfg, str(tmp_path))
    assert sfp2 != sfp1
    changed = [n for n in rs1.fingerprints if rs1.fingerprints[n] != rs2.fingerprints[n]]
    assert len(changed) == 1  # only the split holding record 7
    # Touching the file without changing bytes keeps the key; a config change alters it.
    f.write_bytes(f.read_bytes())
    assert source_fingerprint(cfg, str(tmp_path)) == sfp2
    assert source_fingerprint(cfg.model_copy(update={"seed": 1}), str(tmp_path)) != sfp2


def test_source_fingerprint_is_cheap_for_hub_and_inline(tmp_path):
    hub = DataConfig(sources=[SourceConfig(hub="org/not-downloaded", split="train", revision="a1")])
    # No network and no download: it only hashes the identifiers.
    h1 = source_fingerprint(hub, str(tmp_path))
    h2 = source_fingerprint(
        DataConfig(sources=[SourceConfig(hub="org/not-downloaded", split="train", revision="b2")]),
        str(tmp_path),
    )
    assert h1 != h2
    i1 = source_fingerprint(DataConfig(sources=[SourceConfig(records=[{"text": "a"}])]), str(tmp_path))
    i2 = source_fingerprint(DataConfig(sources=[SourceConfig(records=[{"text": "b"}])]), str(tmp_path))
    assert i1 != i2
    # A local directory behind hub: is hashed by content like any file.
    d = tmp_path / "local"
    d.mkdir()
    _write(d / "train.jsonl", _rows(0, 3))
    cfg = DataConfig(sources=[SourceConfig(hub="local")])
    a = source_fingerprint(cfg, str(tmp_path))
    _write(d / "train.jsonl", _rows(0, 4))
    assert source_fingerprint(cfg, str(tmp_path)) != a


def test_recordset_round_trips_through_json(tmp_path):
    from tuneline.data import RecordSet

    f = _write(tmp_path / "d.jsonl", _rows(0, 20))
    rs = load_records(DataConfig(path=f.name), str(tmp_path))
    back = RecordSet.from_jsonable(json.loads(json.dumps(rs.to_jsonable())))
    assert back.fingerprints == rs.fingerprints and back.info == rs.info
