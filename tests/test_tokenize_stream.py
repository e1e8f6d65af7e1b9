"""Streaming tokenization (file -> Arrow on disk) and num_proc: same rows and stats as in memory."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from tests.conftest import ROOT, TINY_TOKENIZER, fixture_path
from tuneline.config.data import DataConfig
from tuneline.config.template import TemplateConfig, TokenizeConfig
from tuneline.data.loader import load_records
from tuneline.errors import ConfigError, DataError
from tuneline.tokenize import dataset as D
from tuneline.tokenize import prepare_tokenizer, tokenize_split
from tuneline.tokenize.stream import ArrowRows, read_record_chunks, stream_tokenize

WORDS = "the model learns to answer questions about data with care and precision".split()


def _rows(n: int) -> list[dict[str, str]]:
    """Alpaca rows of varied length, some with an input, so truncation and masks vary."""
    out = []
    for i in range(n):
        row = {
            "instruction": " ".join(WORDS[: 2 + i % 9]) + f" {i}",
            "output": " ".join(WORDS * (1 + i % 4)),
        }
        if i % 3 == 0:
            row["input"] = " ".join(WORDS[i % 5 :])
        out.append(row)
    return out


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def tok():
    t = AutoTokenizer.from_pretrained(TINY_TOKENIZER)
    return prepare_tokenizer(t, TemplateConfig(name="chatml"), ".")


def _loaded(path: Path) -> list:
    """The pipeline loader's records for the file, in file order."""
    cfg = DataConfig(path=str(path), validation_split=0, shuffle=False, dedup=False)
    return load_records(cfg, str(path.parent)).splits["train"]


def _same(split, ref) -> None:
    assert split.input_ids == ref.input_ids
    assert split.labels == ref.labels
    assert split.record_index == ref.record_index


def test_stream_equals_loader_plus_tokenize_split(tmp_path, tok):
    src = _write(tmp_path / "a.jsonl", _rows(45))
    records = _loaded(src)
    streamed = [r for chunk in read_record_chunks(src, chunk_lines=8, label="a.jsonl") for r in chunk]
    assert [r.to_dict() for r in streamed] == [r.to_dict() for r in records]

    cfg = TokenizeConfig(max_length=40)  # truncates the longer rows
    ref = tokenize_split(records, tok, cfg)
    res = stream_tokenize(src, tmp_path / "out.arrow", tok, cfg, chunk_records=8)
    assert ref.stats["truncated"] > 0
    assert res.stats == ref.stats and res.records == 45 and res.shape == "alpaca"
    _same(ArrowRows(res.path).to_split(), ref)
    assert not (tmp_path / "out.arrow.partial").exists()


def test_stream_real_tokenizer_and_pool(tmp_path):
    tok_dir = fixture_path("tokenizers/phi-3-mini-instruct")
    alpaca = fixture_path("datasets/alpaca_subset_2k/alpaca_data.json")
    tok = prepare_tokenizer(AutoTokenizer.from_pretrained(tok_dir), TemplateConfig(name="alpaca"), ".")
    src = _write(tmp_path / "alpaca.jsonl", json.loads(alpaca.read_text())[:150])
    ref = tokenize_split(_loaded(src), tok, TokenizeConfig(max_length=128))
    for n_proc in (1, 2):
        cfg = TokenizeConfig(max_length=128, num_proc=n_proc)
        res = stream_tokenize(src, tmp_path / f"o{n_proc}.arrow", tok, cfg, chunk_records=32)
        assert res.stats == ref.stats
        _same(ArrowRows(res.path).to_split(), ref)


def test_bad_line_names_file_and_line(tmp_path, tok):
    rows = [json.dumps(r) for r in _rows(6)]
    rows[2] = '{"instruction": "x", "output": '  # line 3: broken JSON
    rows[4] = json.dumps({"instruction": "x", "output": ""})  # line 5: empty reply
    src = tmp_path / "bad.jsonl"
    src.write_text("\n".join(rows) + "\n")
    out = tmp_path / "o.arrow"
    with pytest.raises(DataError) as e:
        stream_tokenize(src, out, tok, TokenizeConfig(max_length=64), chunk_records=8, label="bad.jsonl")
    msg = str(e.value)
    assert "bad.jsonl:3" in msg and "invalid JSON" in msg
    assert "bad.jsonl:5 output" in msg
    assert not out.exists() and not (tmp_path / "o.arrow.partial").exists()

    res = stream_tokenize(src, out, tok, TokenizeConfig(max_length=64), chunk_records=4, on_error="skip")
    assert res.records == 4 and res.invalid == {"invalid JSON": 1, "empty assistant content": 1}


def test_stream_refuses_what_it_cannot_reproduce(tmp_path, tok):
    arr = tmp_path / "a.jsonl"
    arr.write_text(json.dumps(_rows(2)))
    with pytest.raises(DataError, match="JSON array cannot be streamed"):
        stream_tokenize(arr, tmp_path / "o.arrow", tok, TokenizeConfig())
    text = _write(tmp_path / "t.jsonl", [{"text": "some words " * 20}] * 3)
    with pytest.raises(ConfigError, match="packing"):
        stream_tokenize(text, tmp_path / "o.arrow", tok, TokenizeConfig(max_length=16, packing=False))
    # Per-document blocks (packing) do not cross documents, so chunks reproduce them exactly.
    cfg = TokenizeConfig(max_length=16, packing=True)
    res = stream_tokenize(text, tmp_path / "o.arrow", tok, cfg, chunk_records=2)
    ref = tokenize_split(_loaded(text), tok, cfg)
    assert res.stats == ref.stats
    _same(ArrowRows(res.path).to_split(), ref)


def test_num_proc_in_memory_equals_serial(tmp_path, tok, monkeypatch):
    records = _loaded(_write(tmp_path / "a.jsonl", _rows(40)))
    cfg = TokenizeConfig(max_length=40)
    ref = tokenize_split(records, tok, cfg)
    monkeypatch.setattr(D, "PARALLEL_MIN_RECORDS", 10)
    par = tokenize_split(records, tok, TokenizeConfig(max_length=40, num_proc=2))
    _same(par, ref)
    assert par.stats == ref.stats

    # overflow=error: every chunk's problems, in order, in one error like the serial one.
    def err(**kw):
        with pytest.raises(DataError) as e:
            tokenize_split(records, tok, TokenizeConfig(max_length=40, overflow="error", **kw))
        return str(e.value)

    assert err(num_proc=2) == err()


def test_lazy_reader_rows(tmp_path, tok):
    src = _write(tmp_path / "a.jsonl", _rows(25))
    cfg = TokenizeConfig(max_length=48)
    res = stream_tokenize(src, tmp_path / "o.arrow", tok, cfg, chunk_records=6)
    ref = tokenize_split(_loaded(src), tok, cfg)
    rows = ArrowRows(res.path)
    assert len(rows) == len(ref.input_ids)
    want = [{"input_ids": a, "labels": b} for a, b in zip(ref.input_ids, ref.labels, strict=True)]
    assert [rows[i] for i in range(len(rows))] == want
    assert rows[-1] == want[-1] and rows[7] == want[7]  # back to an earlier batch
    with pytest.raises(IndexError):
        rows[len(rows)]
    again = pickle.loads(pickle.dumps(rows))  # what DataLoader workers do
    assert again[3] == want[3]


def test_tokenize_scale_quick(tmp_path):
    out = tmp_path / "scale.json"
    cmd = [sys.executable, "benchmarks/tokenize_scale.py", "--quick", "--num-proc", "2", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(out.read_text())
    assert {"date", "cpus", "tokenizer", "max_length", "peak_rss", "results"} <= data.keys()
    (r,) = data["results"]
    assert "error" not in r, r
    for key in ("records", "num_proc", "wall_s", "records_per_s", "tokens_per_s", "peak_rss_mb"):
        assert key in r
    assert r["num_proc"] == 2 and r["records"] > 0 and len(r["peak_rss_mb_workers"]) == 2
