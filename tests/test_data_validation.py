"""Every kind of bad data fails before training with file, line, field path and a fix."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tuneline.config import DataConfig, SourceConfig
from tuneline.data import load_records
from tuneline.errors import DataError, UserError


def _chat(*turns: tuple[str, str]) -> dict:
    return {"messages": [{"role": r, "content": c} for r, c in turns]}


GOOD = json.dumps(_chat(("user", "hi"), ("assistant", "hello")))


def _write_lines(path: Path, lines: list[str | bytes]) -> Path:
    path.write_bytes(b"\n".join(x if isinstance(x, bytes) else x.encode() for x in lines) + b"\n")
    return path


def _load(tmp_path: Path, path: Path, **kw) -> object:
    return load_records(DataConfig(path=str(path), **kw), str(tmp_path))


# (name, lines of a JSONL file, expected line, expected field path or "", words the fix mentions)
BAD_JSONL = [
    ("invalid_json", [GOOD, '{"messages": [', GOOD], 2, "", "invalid JSON"),
    ("not_object", [GOOD, GOOD, "[1, 2]"], 3, "", "not a JSON object"),
    (
        "missing_field",
        [GOOD, json.dumps({"messages": [{"role": "user"}]})],
        2,
        "messages[0]",
        "missing required field",
    ),
    (
        "wrong_type_content",
        [json.dumps({"messages": [{"role": "user", "content": 5}]})],
        1,
        "messages[0].content",
        "expected a string",
    ),
    ("wrong_type_messages", [GOOD, json.dumps({"messages": "hello"})], 2, "messages", "expected a list"),
    (
        "unknown_role",
        [GOOD, json.dumps(_chat(("user", "a"), ("tool", "b"), ("assistant", "c")))],
        2,
        "messages[1].role",
        "role_map",
    ),
    (
        "two_user_turns",
        [GOOD, GOOD, json.dumps(_chat(("user", "a"), ("user", "b"), ("assistant", "c")))],
        3,
        "messages[1].role",
        "two user turns in a row",
    ),
    (
        "system_not_first",
        [json.dumps(_chat(("user", "a"), ("system", "s"), ("assistant", "c")))],
        1,
        "messages[1].role",
        "system turn must be the first",
    ),
    (
        "empty_assistant",
        [GOOD, json.dumps(_chat(("user", "a"), ("assistant", "   \n")))],
        2,
        "messages[1].content",
        "empty or whitespace",
    ),
    (
        "no_assistant",
        [GOOD, json.dumps(_chat(("system", "s"), ("user", "a")))],
        2,
        "messages",
        "no assistant turn",
    ),
    (
        "ends_with_user",
        [json.dumps(_chat(("user", "a"), ("assistant", "b"), ("user", "c")))],
        1,
        "messages[2].role",
        "ends with a user turn",
    ),
    ("invalid_utf8", [GOOD, b'{"text": "caf\xe9"}'], 2, "", "invalid UTF-8"),
    ("nul_byte", [GOOD, GOOD, b'{"messages": [\x00]}'], 3, "", "NUL byte"),
    (
        "nul_escape_in_content",
        [json.dumps(_chat(("user", "a\u0000b"), ("assistant", "c")))],
        1,
        "messages[0].content",
        "NUL",
    ),
    (
        "mixed_schemas",
        [
            json.dumps({"instruction": "a", "output": "b"}),
            json.dumps({"instruction": "c", "output": "d"}),
            json.dumps({"prompt": "e", "completion": "f"}),
        ],
        3,
        "",
        "mixed schemas",
    ),
    (
        "chosen_equals_rejected",
        [
            json.dumps({"prompt": "p", "chosen": "x", "rejected": "y"}),
            json.dumps({"prompt": "p", "chosen": "same", "rejected": "same"}),
        ],
        2,
        "chosen",
        "identical",
    ),
    (
        "alpaca_missing_output",
        [json.dumps({"instruction": "a", "output": "b"}), json.dumps({"instruction": "a", "input": "x"})],
        2,
        "output",
        "missing required field",
    ),
]


@pytest.mark.parametrize(
    ("name", "lines", "line", "field", "words"), BAD_JSONL, ids=[b[0] for b in BAD_JSONL]
)
def test_bad_jsonl_reports_file_line_field_and_fix(tmp_path, name, lines, line, field, words):
    f = _write_lines(tmp_path / f"{name}.jsonl", lines)
    with pytest.raises(DataError) as ei:
        _load(tmp_path, f)
    msg = str(ei.value)
    assert isinstance(ei.value, UserError) and ei.value.exit_code == 2
    assert f"{name}.jsonl:{line}" in msg, msg
    if field:
        assert f"{name}.jsonl:{line} {field}:" in msg, msg
    assert words in msg, msg


def test_empty_file(tmp_path):
    f = tmp_path / "empty.jsonl"
    f.write_bytes(b"\n  \n")
    with pytest.raises(DataError, match=r"empty\.jsonl: file is empty"):
        _load(tmp_path, f)


def test_json_array_syntax_error_points_at_line(tmp_path):
    f = tmp_path / "arr.json"
    f.write_text('[\n  {"text": "a"},\n  {"text": "b",,}\n]\n')
    with pytest.raises(DataError, match=r"arr\.json:3: invalid JSON at column 16"):
        _load(tmp_path, f)


def test_json_array_item_lines_are_reported(tmp_path):
    f = tmp_path / "arr.json"
    items = [_chat(("user", "a"), ("assistant", "b")), _chat(("user", "a"), ("assistant", ""))]
    f.write_text(json.dumps(items, indent=2))
    with pytest.raises(DataError) as ei:
        _load(tmp_path, f)
    # Located at the line where the second object starts, not the array's first line.
    start = [i for i, line in enumerate(f.read_text().splitlines(), 1) if line == "  {"][1]
    assert start > 2
    assert f"arr.json:{start} messages[1].content" in str(ei.value)


def test_csv_and_parquet_report_rows(tmp_path):
    c = tmp_path / "bad.csv"
    c.write_text("instruction,output\nq1,a1\nq2,\n")
    with pytest.raises(DataError, match=r"bad\.csv:row 2 output: output is empty"):
        _load(tmp_path, c)
    p = tmp_path / "bad.parquet"
    pq.write_table(
        pa.table({"prompt": ["p1", "p2", "p3"], "chosen": ["a", "b", "c"], "rejected": ["x", "b", "z"]}), p
    )
    with pytest.raises(DataError, match=r"bad\.parquet:row 2 chosen: chosen and rejected"):
        _load(tmp_path, p)


def test_all_problems_collected_first_20_shown(tmp_path):
    f = _write_lines(tmp_path / "many.jsonl", [json.dumps(_chat(("user", "a"), ("assistant", "")))] * 25)
    with pytest.raises(DataError) as ei:
        _load(tmp_path, f)
    assert len(ei.value.problems) == 25
    assert "... and 5 more" in str(ei.value)
    assert "on_error: skip" in str(ei.value)


def test_missing_file_and_empty_glob_name_the_config_key(tmp_path):
    with pytest.raises(DataError, match=r"data\.path: file not found"):
        _load(tmp_path, tmp_path / "nope.jsonl")
    (tmp_path / "real.jsonl").write_text(GOOD + "\n")
    cfg = DataConfig(sources=[SourceConfig(path="real.jsonl"), SourceConfig(path="missing/*.jsonl")])
    with pytest.raises(
        DataError, match=r"data\.sources\[1\]\.path: glob 'missing/\*\.jsonl' matched nothing"
    ):
        load_records(cfg, str(tmp_path))
    cfg = DataConfig(path=["real.jsonl", "reel.jsonl"])
    with pytest.raises(DataError, match=r"data\.path\[1\]: file not found.*did you mean 'real\.jsonl'"):
        load_records(cfg, str(tmp_path))


def test_wrong_kind_for_training_method(tmp_path):
    f = _write_lines(tmp_path / "sft.jsonl", [json.dumps({"instruction": "a", "output": "b"})] * 3)
    with pytest.raises(DataError, match=r"needs preference records"):
        load_records(DataConfig(path=str(f)), str(tmp_path), kind="preference")


def test_skip_policy_drops_counts_and_warns(tmp_path, caplog):
    good = [json.dumps(_chat(("user", f"q{i}"), ("assistant", f"a{i}"))) for i in range(40)]
    bad = [
        json.dumps(_chat(("user", "x"), ("user", "y"))),
        "{broken",
        json.dumps(_chat(("user", "z"), ("assistant", " "))),
    ]
    f = _write_lines(tmp_path / "mixed.jsonl", good[:20] + bad + good[20:])
    with caplog.at_level(logging.WARNING, logger="tuneline.data"):
        rs = _load(tmp_path, f, on_error="skip", max_skip_fraction=0.1, validation_split=0)
    assert len(rs.splits["train"]) == 40
    dropped = rs.info["dropped"]
    assert dropped["total"] == 3
    assert dropped["by_reason"] == {"broken alternation": 1, "invalid JSON": 1, "empty assistant content": 1}
    assert any("mixed.jsonl:21" in p for p in dropped["problems"])
    assert "dropped 3 invalid record" in caplog.text
    # Above the threshold the same data fails, naming the fraction and the knob.
    with pytest.raises(DataError, match=r"3 of 43 records \(7\.0%\).*max_skip_fraction=0\.05"):
        _load(tmp_path, f, on_error="skip", max_skip_fraction=0.05)


def test_skip_policy_never_skips_whole_file_problems(tmp_path):
    (tmp_path / "ok.jsonl").write_text(GOOD + "\n")
    (tmp_path / "empty.jsonl").write_text("")
    cfg = DataConfig(path=["ok.jsonl", "empty.jsonl"], on_error="skip", max_skip_fraction=1.0)
    with pytest.raises(DataError, match="file is empty"):
        load_records(cfg, str(tmp_path))
