"""Each shape normalises to the one record model; real third-party files load as expected."""

from __future__ import annotations

import json

import pytest

from tests.conftest import fixture_path
from tuneline.config import DataConfig, SourceConfig
from tuneline.data import load_records
from tuneline.data.records import joined_content
from tuneline.errors import DataError


def _one(tmp_path, row: dict, kind: str | None = None, **src) -> object:
    cfg = DataConfig(sources=[SourceConfig(records=[row], **src)], validation_split=0)
    return load_records(cfg, str(tmp_path), kind=kind).splits["train"][0]


def U(c):
    return {"role": "user", "content": c}


def A(c):
    return {"role": "assistant", "content": c}


def S(c):
    return {"role": "system", "content": c}


@pytest.mark.parametrize(
    ("row", "messages", "shape"),
    [
        # The alpaca context stays a separate `input` (the alpaca template's "### Input:" block).
        (
            {"instruction": "Sum", "input": "1 2", "output": "3"},
            [{**U("Sum"), "input": "1 2"}, A("3")],
            "alpaca",
        ),
        (
            {"instruction": "Hi", "output": "Yo", "system": "Be brief"},
            [S("Be brief"), U("Hi"), A("Yo")],
            "alpaca",
        ),
        (
            {"instruction": "Q", "context": "ctx", "response": "R", "category": "qa"},
            [{**U("Q"), "input": "ctx"}, A("R")],
            "alpaca",
        ),
        (
            {"instruction": "Q2", "input": "", "output": "R2", "history": [["Q1", "R1"]]},
            [U("Q1"), A("R1"), U("Q2"), A("R2")],
            "alpaca",
        ),
        (
            {"messages": [S("sys"), U("a"), A("b"), U("c"), A("d")]},
            [S("sys"), U("a"), A("b"), U("c"), A("d")],
            "chat",
        ),
        (
            {
                "conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}],
                "system": "s",
            },
            [S("s"), U("a"), A("b")],
            "sharegpt",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "part"}]}, A("b")]},
            [U("part"), A("b")],
            "chat",
        ),
        ({"prompt": "p", "completion": "c"}, [U("p"), A("c")], "prompt_completion"),
        ({"input": "p", "output": "c"}, [U("p"), A("c")], "prompt_completion"),
        ({"prompt": [U("p")], "completion": [A("c")]}, [U("p"), A("c")], "prompt_completion"),
    ],
)
def test_chat_shapes(tmp_path, row, messages, shape):
    r = _one(tmp_path, row, kind="chat")
    assert r.kind == "chat"
    assert r.messages == messages
    assert r.meta["shape"] == shape


def test_text_shape(tmp_path):
    r = _one(tmp_path, {"text": "raw document", "meta": 1}, kind="text")
    assert (r.kind, r.text, r.messages) == ("text", "raw document", [])


def test_text_file_is_one_document(tmp_path):
    (tmp_path / "doc.txt").write_text("line one\nline two\n")
    rs = load_records(DataConfig(path="doc.txt", validation_split=0), str(tmp_path), kind="text")
    assert rs.splits["train"][0].text == "line one\nline two\n"


@pytest.mark.parametrize(
    ("row", "prompt", "chosen", "rejected"),
    [
        ({"prompt": "p", "chosen": "good", "rejected": "bad"}, [U("p")], [A("good")], [A("bad")]),
        (
            {"prompt": [S("s"), U("p")], "chosen": [A("good")], "rejected": [A("bad")]},
            [S("s"), U("p")],
            [A("good")],
            [A("bad")],
        ),
        (  # llamafactory dpo_en_demo style
            {
                "conversations": [{"from": "human", "value": "p"}],
                "chosen": {"from": "gpt", "value": "good"},
                "rejected": {"from": "gpt", "value": "bad"},
            },
            [U("p")],
            [A("good")],
            [A("bad")],
        ),
        (  # ultrafeedback style: full conversations sharing the prompt
            {"prompt": "p", "chosen": [U("p"), A("good")], "rejected": [U("p"), A("bad")]},
            [U("p")],
            [A("good")],
            [A("bad")],
        ),
        (  # hh-rlhf transcripts with a shared multi-turn prefix
            {
                "chosen": "\n\nHuman: q1\n\nAssistant: a1\n\nHuman: q2\n\nAssistant: good",
                "rejected": "\n\nHuman: q1\n\nAssistant: a1\n\nHuman: q2\n\nAssistant: bad",
            },
            [U("q1"), A("a1"), U("q2")],
            [A("good")],
            [A("bad")],
        ),
        (  # llamafactory ranking alpaca (oasst rm): output = [chosen, rejected]
            {"instruction": "q", "input": "", "output": ["good", "bad"]},
            [U("q")],
            [A("good")],
            [A("bad")],
        ),
    ],
)
def test_preference_shapes(tmp_path, row, prompt, chosen, rejected):
    r = _one(tmp_path, row, kind="preference")
    assert (r.kind, r.messages, r.chosen, r.rejected) == ("preference", prompt, chosen, rejected)


def test_columns_remap_and_error_paths_use_file_names(tmp_path):
    row = {"question": "q", "response_j": "good", "response_k": "bad"}
    cols = {"prompt": "question", "chosen": "response_j", "rejected": "response_k"}
    r = _one(tmp_path, row, columns=cols)
    assert (r.messages, r.chosen, r.rejected) == ([U("q")], [A("good")], [A("bad")])
    bad = {"question": "q", "response_j": "same", "response_k": "same"}
    with pytest.raises(
        DataError, match=r"index 0 response_j: chosen and rejected \(response_k\) are identical"
    ):
        _one(tmp_path, bad, columns=cols)
    # Message-level keys remap too.
    row = {"dialog": [{"speaker": "user", "text": "a"}, {"speaker": "assistant", "text": "b"}]}
    r = _one(tmp_path, row, columns={"messages": "dialog", "role": "speaker", "content": "text"})
    assert r.messages == [U("a"), A("b")]


def test_role_map_maps_and_drops(tmp_path):
    row = {
        "conversations": [
            {"from": "Customer", "value": "a"},
            {"from": "Agent", "value": "b"},
            {"from": "observation", "value": "log"},
        ]
    }
    with pytest.raises(DataError, match=r"conversations\[0\]\.from: unknown role 'Customer'"):
        _one(tmp_path, row)
    r = _one(tmp_path, row, role_map={"Customer": "user", "Agent": "assistant", "observation": "drop"})
    assert r.messages == [U("a"), A("b")]


def test_system_prompt_added_only_where_missing(tmp_path):
    recs = [
        {"messages": [U("a"), A("b")]},
        {"messages": [S("own"), U("c"), A("d")]},
    ]
    cfg = DataConfig(sources=[SourceConfig(records=recs)], system_prompt="You help.", validation_split=0)
    rs = load_records(cfg, str(tmp_path))
    systems = sorted(r.messages[0]["content"] for r in rs.splits["train"])
    assert systems == ["You help.", "own"]


def test_explicit_format_overrides_detection(tmp_path):
    # Has instruction+output but is declared text: read the text column only.
    r = _one(tmp_path, {"instruction": "i", "output": "o", "text": "full prompt"}, format="text")
    assert r.kind == "text" and r.text == "full prompt"
    with pytest.raises(DataError, match=r"index 0 text: missing required field 'text'"):
        _one(tmp_path, {"instruction": "i", "output": "o"}, format="text")


def test_unknown_shape_lists_options(tmp_path):
    with pytest.raises(DataError, match=r"cannot tell the data shape from the columns \['a', 'b'\].*columns"):
        _one(tmp_path, {"a": 1, "b": 2})


# ---------------------------------------------------------------- real third-party data


def _real(rel: str, **kw) -> DataConfig:
    return DataConfig(path=str(fixture_path(f"datasets/{rel}")), **kw)


def test_alpaca_subset_2k():
    rs = load_records(_real("alpaca_subset_2k/alpaca_data.json"), "/", kind="chat")
    assert sum(rs.info["counts"].values()) + rs.info["dedup"]["removed"] == 2000
    assert rs.info["shapes"]["train"] == {"alpaca": len(rs.splits["train"])}
    assert 0.05 < len(rs.splits["validation"]) / 2000 < 0.15
    assert all(r.messages[-1]["role"] == "assistant" for r in rs.splits["train"])


def test_lima_and_dolly():
    rs = load_records(_real("lima/lima.json"), "/", kind="chat")
    assert sum(rs.info["counts"].values()) == 1029
    rs = load_records(_real("tiny_fixtures/litgpt_dolly.json", validation_split=0), "/", kind="chat")
    recs = sorted(rs.splits["train"], key=lambda r: r.meta["line"])
    assert len(recs) == 12
    first = recs[0].messages[0]
    assert first["content"] == "When did Virgin Australia start operating?"
    assert joined_content(first).startswith("When did Virgin Australia start operating?\n\nVirgin Australia")


def test_llamafactory_alpaca_and_dpo():
    rs = load_records(_real("llamafactory_demo/alpaca_en_demo.json"), "/", kind="chat")
    assert sum(rs.info["counts"].values()) + rs.info["dedup"]["removed"] == 999
    rs = load_records(_real("llamafactory_demo/dpo_en_demo.json"), "/", kind="preference")
    assert sum(rs.info["counts"].values()) + rs.info["dedup"]["removed"] == 300
    for r in rs.splits["train"]:
        assert r.messages[-1]["role"] == "user" and r.chosen[0]["role"] == "assistant"
        assert r.chosen != r.rejected
    assert {r.meta["shape"] for r in rs.splits["train"]} == {"preference"}


def test_hh_rlhf_gz_has_real_defects_that_skip_handles():
    cfg = _real("hh_rlhf/harmless-base/test.jsonl.gz")
    with pytest.raises(DataError) as ei:
        load_records(cfg, "/", kind="preference")
    assert "test.jsonl.gz:87 chosen[3].content: assistant content is empty" in str(ei.value)
    rs = load_records(cfg.model_copy(update={"on_error": "skip"}), "/", kind="preference")
    assert rs.info["dropped"]["total"] == 13
    assert sum(rs.info["counts"].values()) + rs.info["dedup"]["removed"] == 2312 - 13
    r = rs.splits["train"][0]
    assert r.messages[-1]["role"] == "user" and r.chosen[-1]["role"] == "assistant"


def test_stack_exchange_paired_via_columns():
    cfg = DataConfig(
        sources=[
            SourceConfig(
                path=str(fixture_path("datasets/tiny_fixtures/torchtune_stack_exchange_paired_tiny.json")),
                columns={"prompt": "question", "chosen": "response_j", "rejected": "response_k"},
            )
        ]
    )
    rs = load_records(cfg, "/", kind="preference")
    assert sum(rs.info["counts"].values()) == 25


def test_glaive_tool_roles_load_as_tool_calls_or_as_mapped():
    path = str(fixture_path("datasets/llamafactory_demo/glaive_toolcall_en_demo.json"))
    rs = load_records(DataConfig(path=path), "/")  # function_call / observation: calls and results
    recs = [r for recs in rs.splits.values() for r in recs]
    assert any(m.get("tool_calls") for r in recs for m in r.messages)
    # A role_map still wins: the same turns as plain assistant / user text.
    cfg = DataConfig(path=path, role_map={"function_call": "assistant", "observation": "user"})
    rs = load_records(cfg, "/", kind="chat")
    assert sum(rs.info["counts"].values()) > 250


def test_json_lines_saved_as_json(tmp_path):
    f = tmp_path / "lines.json"
    f.write_text(json.dumps({"text": "a"}) + "\n" + json.dumps({"text": "b"}) + "\n")
    rs = load_records(DataConfig(path=str(f), validation_split=0), str(tmp_path))
    assert sorted(r.text for r in rs.splits["train"]) == ["a", "b"]
