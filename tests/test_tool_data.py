"""Tool-calling data: OpenAI-style and ShareGPT (glaive) records load into one form; bad calls,
results and schemas fail with file:line, the field path and the fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import ROOT, fixture_path
from tuneline.config import DataConfig
from tuneline.data import load_records
from tuneline.errors import DataError

TOOLS = [
    {
        "type": "function",
        "function": {"name": "lookup_lore", "parameters": {"type": "object", "properties": {}}},
    }
]


def _call(name="lookup_lore", args='{"realm": "Velan"}', cid=None):
    call = {"type": "function", "function": {"name": name, "arguments": args}}
    return {**call, "id": cid} if cid else call


def _row(*msgs, tools=TOOLS):
    row = {"messages": list(msgs)}
    if tools is not None:
        row["tools"] = tools
    return row


USER = {"role": "user", "content": "Capital of Velan?"}
RESULT = {"role": "tool", "content": '{"capital": "Thornmoor"}'}
ANSWER = {"role": "assistant", "content": "Thornmoor."}
GOOD = _row(USER, {"role": "assistant", "content": None, "tool_calls": [_call()]}, RESULT, ANSWER)


def _load(tmp_path: Path, rows: list[dict], **kw):
    f = tmp_path / "t.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return load_records(DataConfig(path=str(f), validation_split=0.0, **kw), str(tmp_path))


def test_openai_records_normalise_calls_and_link_results(tmp_path):
    recs = _load(tmp_path, [GOOD]).splits["train"]
    rec = recs[0]
    assert rec.tools == TOOLS and rec.meta["shape"] == "chat"
    call = rec.messages[1]["tool_calls"][0]
    # Arguments parsed (templates serialise them with tojson), a nine-character id handed out.
    assert call == {
        "id": "call00001",
        "type": "function",
        "function": {"name": "lookup_lore", "arguments": {"realm": "Velan"}},
    }
    assert rec.messages[2] == {**RESULT, "tool_call_id": "call00001", "name": "lookup_lore"}
    # Calls and schemas are content: a record differing only in its arguments is not a duplicate.
    other = _row(
        USER, {"role": "assistant", "tool_calls": [_call(args='{"realm": "Fenor"}')]}, RESULT, ANSWER
    )
    assert len(_load(tmp_path, [GOOD, other, GOOD]).splits["train"]) == 2


def test_glaive_sharegpt_fixture_loads_with_its_dataset_info_columns(tmp_path):
    path = fixture_path("datasets/llamafactory_demo/glaive_toolcall_en_demo.json")
    info = json.loads((path.parent / "dataset_info.json").read_text())["glaive_toolcall_en_demo"]
    cols = info["columns"]  # {"messages": "conversations", "tools": "tools"}
    rs = load_records(DataConfig(path=str(path), columns=cols, validation_split=0.0), str(tmp_path))
    recs = rs.splits["train"]
    with_calls = [r for r in recs if any(m.get("tool_calls") for m in r.messages)]
    assert len(recs) > 200 and len(with_calls) > 100
    rec = with_calls[0]
    i = next(i for i, m in enumerate(rec.messages) if m.get("tool_calls"))
    fn = rec.messages[i]["tool_calls"][0]["function"]
    assert fn["name"] in [t["function"]["name"] for t in rec.tools] and isinstance(fn["arguments"], dict)
    assert rec.messages[i + 1]["role"] == "tool" and rec.messages[i + 1]["name"] == fn["name"]
    # A record with "tools": "[]" and no calls is plain chat.
    assert any(r.tools is None for r in recs)


def test_glaive_fixture_passes_dry_run_with_set_data_path(tuneline_home, capsys):
    import run

    path = fixture_path("datasets/llamafactory_demo/glaive_toolcall_en_demo.json")
    cfg = str(ROOT / "configs" / "sft-tools.yaml")
    assert run.main(["--config", cfg, "--set", f"data.path={path}", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "chatml-tools" in out and "tool_call_accuracy" in out
    # The same data with a template that cannot render tools: refused before anything runs.
    sft = str(ROOT / "configs" / "sft.yaml")
    assert run.main(["--config", sft, "--set", f"data.path={path}", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "template.name" in err and "'chatml'" in err and "chatml-tools" in err


BAD = [
    (
        "arguments_not_json",
        _row(USER, {"role": "assistant", "tool_calls": [_call(args='{"realm": Velan}')]}, RESULT, ANSWER),
        "messages[1].tool_calls[0].function.arguments",
        "not valid JSON",
    ),
    (
        "arguments_not_object",
        _row(USER, {"role": "assistant", "tool_calls": [_call(args="[1, 2]")]}, RESULT, ANSWER),
        "messages[1].tool_calls[0].function.arguments",
        "JSON object",
    ),
    ("result_without_call", _row(USER, RESULT, ANSWER), "messages[1].role", "no preceding tool call"),
    (
        "unknown_function",
        _row(USER, {"role": "assistant", "tool_calls": [_call(name="cast_spell")]}, RESULT, ANSWER),
        "messages[1].tool_calls[0].function.name",
        "not in the record's tools",
    ),
    (
        "call_without_tools",
        _row(USER, {"role": "assistant", "tool_calls": [_call()]}, RESULT, ANSWER, tools=None),
        "tools",
        "add the function schemas",
    ),
    (
        "result_wrong_id",
        _row(
            USER,
            {"role": "assistant", "tool_calls": [_call(cid="abc123xyz")]},
            {**RESULT, "tool_call_id": "zzz999zzz"},
            ANSWER,
        ),
        "messages[2].tool_call_id",
        "answers none of the calls",
    ),
    (
        "missing_result",
        _row(USER, {"role": "assistant", "tool_calls": [_call()]}, ANSWER),
        "messages[2].role",
        "have no result",
    ),
    ("tools_not_json", _row(USER, ANSWER, tools="[{oops"), "tools", "not valid JSON"),
    ("tool_without_name", _row(USER, ANSWER, tools=[{"description": "x"}]), "tools[0]", "non-empty 'name'"),
    (
        "sharegpt_call_not_json",
        {
            "conversations": [
                {"from": "human", "value": "hi"},
                {"from": "function_call", "value": "lookup_lore(Velan)"},
                {"from": "observation", "value": "x"},
                {"from": "gpt", "value": "ok"},
            ],
            "tools": json.dumps([{"name": "lookup_lore", "parameters": {}}]),
        },
        "conversations[1].value",
        "not valid JSON",
    ),
]


@pytest.mark.parametrize(("name", "row", "field", "words"), BAD, ids=[b[0] for b in BAD])
def test_bad_tool_records_report_file_line_field_and_fix(tmp_path, name, row, field, words):
    with pytest.raises(DataError) as ei:
        _load(tmp_path, [GOOD, row])
    msg = str(ei.value)
    assert ei.value.exit_code == 2
    assert f"t.jsonl:2 {field}:" in msg, msg
    assert words in msg, msg


def test_demo_tool_data_is_what_the_script_writes(tmp_path):
    """data/lorekeep_tools.jsonl is deterministic output of scripts/make_tool_data.py."""
    import subprocess
    import sys

    shipped = (ROOT / "data" / "lorekeep_tools.jsonl").read_bytes()
    rows = [json.loads(line) for line in shipped.decode().splitlines()]
    assert len(rows) == 270
    calls = [m["tool_calls"][0]["function"] for r in rows for m in r["messages"] if m.get("tool_calls")]
    assert len(calls) == 540 and {c["name"] for c in calls} == {"lookup_lore", "travel_days"}
    code = (
        "import runpy, sys, pathlib, make_demo_data as m;"
        f"m.write_jsonl = lambda n, rows: pathlib.Path({str(tmp_path)!r}, n).write_text("
        "''.join(__import__('json').dumps(r, ensure_ascii=False) + '\\n' for r in rows));"
        "runpy.run_path(sys.argv[1], run_name='__main__')"
    )
    script = ROOT / "scripts" / "make_tool_data.py"
    env_path = str(ROOT / "scripts")
    subprocess.run([sys.executable, "-c", code, str(script)], check=True, cwd=env_path)
    assert (tmp_path / "lorekeep_tools.jsonl").read_bytes() == shipped
