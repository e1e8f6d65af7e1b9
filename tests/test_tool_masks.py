"""Loss masks of tool-calling conversations on real chat templates with tools support, token by token.

For each (tokenizer, template) pair: the supervised tokens are exactly the assistant turns
(each tool call and each answer, with its end-of-turn token); nothing of the system turn,
the tool schemas, the user turns or the tool results is supervised; each supervised call
parses back, in the template's own format, to the call in the data; and the ids equal what
the saved and reloaded tokenizer produces from its own `apply_chat_template(..., tools=...)`.
"""

from __future__ import annotations

import json
import shutil

import pytest

from tests.conftest import fixture_path
from tests.test_tokenization_real import _load, llama3_tokenizer  # noqa: F401 (fixture)
from tuneline.config.template import TemplateConfig, TokenizeConfig
from tuneline.data.records import Record
from tuneline.errors import ConfigError
from tuneline.evaluate.tool_calls import format_for_template, parse_tool_calls
from tuneline.tokenize import prepare_tokenizer, tokenize_split
from tuneline.tokenize.preview import supervised_texts

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "lookup_lore",
            "description": "TOOLSCHEMAMARKER a fact about a realm",
            "parameters": {
                "type": "object",
                "properties": {
                    "realm": {"type": "string", "description": "the realm"},
                    "topic": {"type": "string", "description": "capital, ruler, ..."},
                },
                "required": ["realm", "topic"],
            },
        },
    }
]


def _call(cid: str, realm: str) -> dict:
    args = {"realm": realm, "topic": "capital"}
    return {"id": cid, "type": "function", "function": {"name": "lookup_lore", "arguments": args}}


CONVO = [
    {"role": "system", "content": "You are SYSMARKER, a terse assistant."},
    {"role": "user", "content": "USERMARKERONE: what is the capital of Velan?"},
    {"role": "assistant", "content": "", "tool_calls": [_call("call00001", "Velan")]},
    {
        "role": "tool",
        "content": '{"capital": "RESULTMARKERONE"}',
        "tool_call_id": "call00001",
        "name": "lookup_lore",
    },
    {"role": "assistant", "content": "The capital of Velan is Thornmoor."},
    {"role": "user", "content": "USERMARKERTWO: and of Fenor?"},
    {"role": "assistant", "content": "", "tool_calls": [_call("call00002", "Fenor")]},
    {
        "role": "tool",
        "content": '{"capital": "RESULTMARKERTWO"}',
        "tool_call_id": "call00002",
        "name": "lookup_lore",
    },
    {"role": "assistant", "content": "Coppermere is the capital of Fenor."},
]
MARKERS = (
    "SYSMARKER",
    "USERMARKERONE",
    "USERMARKERTWO",
    "RESULTMARKERONE",
    "RESULTMARKERTWO",
    "TOOLSCHEMAMARKER",
)


def _mistral_v3(tmp_path):
    from transformers import LlamaTokenizer

    d = tmp_path / "mistral-v3"
    d.mkdir()
    shutil.copy(
        fixture_path("tokenizers/mistral-sentencepiece/mistral_instruct_tokenizer_240323.model.v3"),
        d / "tokenizer.model",
    )
    return LlamaTokenizer.from_pretrained(d)


# (tokenizer, template file, end-of-turn string)
CASES = [
    ("llama3", "chat_templates/trl/llama3_1.jinja", "<|eot_id|>"),
    ("tiny", "chat_templates/from_tokenizer_configs/qwen2.5-instruct.jinja", "<|im_end|>"),
    ("mistral-v3", "chat_templates/axolotl/mistral_v2v3.jinja", "</s>"),  # HF Mistral-7B-Instruct-v0.3
    ("tiny", "chat_templates/vllm/tool_chat_template_hermes.jinja", "<|im_end|>"),
    ("tiny", None, "<|im_end|>"),  # the project's chatml-tools
]


def _prepare(name, rel, tiny_tokenizer_dir, request, tmp_path):
    tok = _mistral_v3(tmp_path) if name == "mistral-v3" else _load(name, tiny_tokenizer_dir, request)
    if rel is None:
        prepare_tokenizer(tok, TemplateConfig(name="chatml-tools"), ".")
    else:
        (tmp_path / "t.jinja").write_text(fixture_path(rel).read_text())
        prepare_tokenizer(tok, TemplateConfig(jinja_path="t.jinja"), str(tmp_path))
    return tok


@pytest.mark.parametrize(
    ("name", "rel", "eot"), CASES, ids=[f"{c[0]}:{c[1] or 'chatml-tools'}" for c in CASES]
)
def test_tool_turns_masked_token_by_token(name, rel, eot, tiny_tokenizer_dir, request, tmp_path):
    from transformers import AutoTokenizer

    tok = _prepare(name, rel, tiny_tokenizer_dir, request, tmp_path)
    split = tokenize_split([Record(messages=CONVO, tools=TOOLS)], tok, TokenizeConfig(max_length=4096))
    assert split.stats["n_out"] == 1
    ids, labels = split.input_ids[0], split.labels[0]
    assert all(lab == -100 or lab == i for lab, i in zip(labels, ids, strict=True))

    spans = supervised_texts(ids, labels, tok)
    turns = [m for m in CONVO if m["role"] == "assistant"]
    assert len(spans) == len(turns), spans
    fmt = format_for_template(tok.chat_template)
    assert fmt != "auto"
    for span, turn in zip(spans, turns, strict=True):
        body = span.strip()
        assert body.endswith(eot), (span, eot)  # the model learns to stop after a call too
        body = body[: -len(eot)].strip()
        if turn.get("tool_calls"):
            fn = turn["tool_calls"][0]["function"]
            assert parse_tool_calls(body, fmt) == [{"name": fn["name"], "arguments": fn["arguments"]}], body
        else:
            assert body == turn["content"], (body, turn)
    joined = "".join(spans)
    for marker in MARKERS:
        assert marker not in joined, marker
    # The schemas, the user turns and the results are in the context, unsupervised (Mistral's
    # template writes the system text only into a final user turn, so not here).
    text = tok.decode(ids)
    assert all(marker in text for marker in MARKERS if marker != "SYSMARKER")

    # Saved and reloaded, the tokenizer's own apply_chat_template(tools=...) gives the same ids.
    tok.save_pretrained(tmp_path / "saved")
    re_tok = AutoTokenizer.from_pretrained(tmp_path / "saved")
    rendered = re_tok.apply_chat_template(CONVO, tools=TOOLS, tokenize=False)
    expect = re_tok(rendered, add_special_tokens=False)["input_ids"]
    if len(ids) == len(expect) + 1 and ids[0] == tok.bos_token_id:
        expect = [tok.bos_token_id, *expect]
    assert ids == expect


def test_mistral_moves_the_tools_and_turns_are_still_found(tiny_tokenizer_dir, request, tmp_path):
    """Mistral v3 writes [AVAILABLE_TOOLS] before the *last* user turn, so the conversation is not
    prefix-stable; each assistant turn is found as what it adds to its own prefix."""
    tok = _prepare(
        "mistral-v3", "chat_templates/axolotl/mistral_v2v3.jinja", tiny_tokenizer_dir, request, tmp_path
    )
    split = tokenize_split([Record(messages=CONVO, tools=TOOLS)], tok, TokenizeConfig(max_length=4096))
    assert split.stats["prefix_fallbacks"] >= 1
    text = tok.decode(split.input_ids[0])
    assert text.index("[AVAILABLE_TOOLS]") > text.index("USERMARKERONE")


def test_template_without_tools_support_names_it_and_the_fix(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    prepare_tokenizer(tok, TemplateConfig(name="chatml"), ".")
    rec = Record(messages=CONVO, tools=TOOLS, meta={"source": "data/t.jsonl", "line": 7})
    with pytest.raises(ConfigError) as e:
        tokenize_split([rec], tok, TokenizeConfig())
    msg = str(e.value)
    assert "template.name" in msg and "'chatml'" in msg and "data/t.jsonl:7" in msg
    assert "chatml-tools" in msg


def test_chatml_tools_without_tools_renders_like_chatml(tiny_tokenizer_dir):
    from tuneline.tokenize.templates import BUILTIN_TEMPLATES, compile_template, render

    msgs = [m for m in CONVO if not m.get("tool_calls") and m["role"] != "tool"]
    for agp in (False, True):
        a = render(compile_template(BUILTIN_TEMPLATES["chatml-tools"]), msgs, {}, add_generation_prompt=agp)
        b = render(compile_template(BUILTIN_TEMPLATES["chatml"]), msgs, {}, add_generation_prompt=agp)
        assert a == b


def test_generation_prompt_carries_the_tools(tiny_tokenizer_dir):
    """Evaluation prompts render the schemas the model trained with."""
    from transformers import AutoTokenizer

    from tuneline.tokenize import encode_prompts

    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    prepare_tokenizer(tok, TemplateConfig(name="chatml-tools"), ".")
    texts, ids = encode_prompts(tok, [CONVO[:2]], tools=[TOOLS])
    assert "TOOLSCHEMAMARKER" in texts[0] and texts[0].endswith("<|im_start|>assistant\n")
    assert tok.decode(ids[0]) == texts[0]
    assert json.loads(texts[0].split("<tools>\n")[1].split("\n</tools>")[0]) == TOOLS[0]["function"]
