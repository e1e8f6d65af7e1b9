"""Parsing generated tool calls per template format, and the tool_call metric with its intervals."""

from __future__ import annotations

import json

import pytest

from tests.conftest import fixture_path
from tuneline.data.records import Record
from tuneline.evaluate.tool_calls import (
    format_for_template,
    judge_call,
    parse_tool_calls,
    reference_text,
    tool_prompt_and_reference,
)

CALL = {"name": "lookup_lore", "arguments": {"realm": "Velan", "topic": "capital"}}
REF = reference_text([{"id": "call00001", "type": "function", "function": CALL}])


@pytest.mark.parametrize(
    ("rel", "fmt"),
    [
        ("chat_templates/vllm/tool_chat_template_hermes.jinja", "hermes"),
        ("chat_templates/from_tokenizer_configs/qwen2.5-instruct.jinja", "hermes"),
        ("chat_templates/trl/llama3_1.jinja", "llama3_json"),
        ("chat_templates/vllm/tool_chat_template_llama3.1_json.jinja", "llama3_json"),
        ("chat_templates/axolotl/mistral_v2v3.jinja", "mistral"),
        ("chat_templates/chujiezheng/chat_templates/chatml.jinja", "auto"),
    ],
)
def test_format_follows_the_template(rel, fmt):
    assert format_for_template(fixture_path(rel).read_text()) == fmt


# What each template's assistant turn looks like once generated and decoded (see
# tests/test_tool_masks.py for the same strings cut from real renders token by token).
OUTPUTS = [
    (
        "hermes",
        '<tool_call>\n{"name": "lookup_lore", "arguments": {"realm": "Velan", "topic": "capital"}}\n</tool_call>',
    ),
    (
        "hermes",
        '<tool_call>\n{ "arguments": {"topic": "capital", "realm": "Velan"}, "name": "lookup_lore"}\n</tool_call> ',
    ),
    (
        "hermes",
        '<tool_call>{"name": "lookup_lore", "arguments": "{\\"realm\\": \\"Velan\\", \\"topic\\": \\"capital\\"}"}',
    ),
    ("llama3_json", '{"name": "lookup_lore", "parameters": {"realm": "Velan", "topic": "capital"}}'),
    (
        "llama3_json",
        '<|python_tag|>{"name": "lookup_lore", "parameters": {"realm": "Velan", "topic": "capital"}}',
    ),
    (
        "mistral",
        '[TOOL_CALLS] [{"name": "lookup_lore", "arguments": {"realm": "Velan", "topic": "capital"}, "id": "call00001"}]',
    ),
    (
        "mistral",
        '[{"name": "lookup_lore", "arguments": {"realm": "Velan", "topic": "capital"}, "id": "call00001"}]',
    ),
]


@pytest.mark.parametrize(("fmt", "text"), OUTPUTS)
def test_parsers_read_each_format_and_auto_agrees(fmt, text):
    assert parse_tool_calls(text, fmt) == [CALL]
    assert parse_tool_calls(text, "auto") == [CALL]
    assert judge_call(text, REF, fmt) == (1, 1, 1, 1)


def test_wrong_calls_are_told_apart():
    wrong_args = (
        '<tool_call>{"name": "lookup_lore", "arguments": {"realm": "Fenor", "topic": "capital"}}</tool_call>'
    )
    wrong_name = (
        '<tool_call>{"name": "travel_days", "arguments": {"realm": "Velan", "topic": "capital"}}</tool_call>'
    )
    assert judge_call(wrong_args, REF, "hermes") == (1, 1, 1, 0)
    assert judge_call(wrong_name, REF, "hermes") == (1, 1, 0, 0)
    assert judge_call("<tool_call>{lookup_lore Velan</tool_call>", REF, "hermes") == (1, 0, 0, 0)
    assert judge_call("The capital of Velan is Thornmoor.", REF, "hermes") == (1, 0, 0, 0)
    # A format mismatch does not parse: a Llama-3.1 answer is not a Hermes call.
    assert parse_tool_calls('{"name": "lookup_lore", "parameters": {}}', "hermes") is None
    # A plain-text reference is not a tool-call turn: counted nowhere.
    assert judge_call(wrong_args, "Thornmoor.", "hermes") == (0, 0, 0, 0)
    with pytest.raises(ValueError, match="unknown tool call format"):
        parse_tool_calls("x", "xml")


def test_two_calls_compare_as_a_set():
    other = {"name": "travel_days", "arguments": {"origin": "Velan", "destination": "Fenor"}}
    ref = reference_text([CALL, other])
    text = "".join(f"<tool_call>{json.dumps(c)}</tool_call>" for c in (other, CALL))
    assert judge_call(text, ref, "hermes") == (1, 1, 1, 1)
    assert judge_call(f"<tool_call>{json.dumps(CALL)}</tool_call>", ref, "hermes") == (1, 1, 0, 0)


def test_held_out_turn_is_the_first_call():
    msgs = [
        {"role": "user", "content": "Capital of Velan?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"id": "call00001", "type": "function", "function": CALL}],
        },
        {"role": "tool", "content": "Thornmoor", "tool_call_id": "call00001", "name": "lookup_lore"},
        {"role": "assistant", "content": "Thornmoor."},
    ]
    prompt, ref = tool_prompt_and_reference(Record(messages=msgs, tools=[]))
    assert prompt == msgs[:1] and json.loads(ref) == [CALL]
    prompt, ref = tool_prompt_and_reference(Record(messages=[msgs[0], msgs[3]], tools=[]))
    assert ref == "Thornmoor."


def test_tool_call_metric_has_bootstrap_intervals_and_paired_deltas(tuneline_home):
    from tuneline.evaluate.scoring import compare_systems, score

    good = f"<tool_call>{json.dumps(CALL)}</tool_call>"
    bad = (
        '<tool_call>{"name": "lookup_lore", "arguments": {"realm": "Fenor", "topic": "capital"}}</tool_call>'
    )
    refs = [REF] * 30
    tuned = [good] * 24 + [bad] * 6
    base = ["Thornmoor."] * 30
    kwargs = {"tool_call": {"format": "hermes"}}
    out = score(["tool_call"], tuned, refs, metric_kwargs=kwargs, n_resamples=200)
    assert set(out) == {"tool_call_accuracy", "tool_name_accuracy", "tool_call_parse_rate"}
    acc = out["tool_call_accuracy"]
    assert acc.value == pytest.approx(0.8) and acc.ci_low < 0.8 < acc.ci_high
    assert out["tool_name_accuracy"].value == 1.0 and len(acc.per_sample) == 30
    cmp = compare_systems(["tool_call"], base, tuned, refs, metric_kwargs=kwargs, n_resamples=200)
    assert cmp["tool_call_accuracy"].significant and cmp["tool_call_accuracy"].delta == pytest.approx(0.8)


def test_registry_metric_accepts_tool_call_keys(tmp_path):
    from tests.conftest import tiny_project

    cfg = tiny_project(tmp_path, eval={"metrics": ["tool_call"]}, registry={"metric": "tool_call_accuracy"})
    assert cfg.eval.score_keys() == ("tool_call_accuracy", "tool_name_accuracy", "tool_call_parse_rate")
