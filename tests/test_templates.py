"""Template resolution and the built-in templates' exact output."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from tests.conftest import fixture_path
from tuneline.config.template import TemplateConfig
from tuneline.errors import ConfigError
from tuneline.tokenize.templates import (
    BUILTIN_TEMPLATES,
    compile_template,
    render,
    resolve_chat_template,
    template_variables,
)

CONVO = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "Bye"},
    {"role": "assistant", "content": "See you."},
]


@pytest.fixture
def tok(tiny_tokenizer_dir):
    return AutoTokenizer.from_pretrained(tiny_tokenizer_dir)


def test_auto_falls_back_to_chatml_without_own_template(tok):
    assert tok.chat_template is None
    assert resolve_chat_template(tok, TemplateConfig(), ".") == BUILTIN_TEMPLATES["chatml"]


def test_auto_prefers_the_tokenizers_own_template(tok):
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    assert resolve_chat_template(tok, TemplateConfig(), ".") == tok.chat_template
    # A named built-in overrides it.
    assert resolve_chat_template(tok, TemplateConfig(name="zephyr"), ".") == BUILTIN_TEMPLATES["zephyr"]


def test_tokenizer_mode_requires_a_template(tok):
    with pytest.raises(ConfigError) as e:
        resolve_chat_template(tok, TemplateConfig(name="tokenizer"), ".")
    assert "template.name" in str(e.value)


def test_jinja_path_missing_and_invalid(tok, tmp_path):
    with pytest.raises(ConfigError) as e:
        resolve_chat_template(tok, TemplateConfig(jinja_path="nope.jinja"), str(tmp_path))
    assert "template.jinja_path" in str(e.value)
    (tmp_path / "bad.jinja").write_text("{% for m in messages %}{{ m['content'] }")
    with pytest.raises(ConfigError) as e:
        resolve_chat_template(tok, TemplateConfig(jinja_path="bad.jinja"), str(tmp_path))
    assert "template.jinja_path" in str(e.value) and "invalid jinja" in str(e.value)
    (tmp_path / "ok.jinja").write_text(
        "{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}"
    )
    assert "m['role']" in resolve_chat_template(tok, TemplateConfig(jinja_path="ok.jinja"), str(tmp_path))


@pytest.mark.parametrize("name", sorted(BUILTIN_TEMPLATES))
def test_builtin_render_equals_apply_chat_template(tok, name):
    tok.chat_template = BUILTIN_TEMPLATES[name]
    ours = render(compile_template(tok.chat_template), CONVO, template_variables(tok))
    assert ours == tok.apply_chat_template(CONVO, tokenize=False)
    gen = render(
        compile_template(tok.chat_template), CONVO[:2], template_variables(tok), add_generation_prompt=True
    )
    assert gen == tok.apply_chat_template(CONVO[:2], tokenize=False, add_generation_prompt=True)


@pytest.mark.parametrize(
    ("name", "reference"),
    [
        ("zephyr", "chat_templates/chujiezheng/chat_templates/zephyr.jinja"),
        ("llama-3", "chat_templates/chujiezheng/chat_templates/llama-3-instruct.jinja"),
        ("chatml", "chat_templates/from_tokenizer_configs/qwen2.5-instruct.jinja"),
    ],
)
def test_builtins_match_reference_templates(name, reference):
    """Our built-ins write exactly what the real model templates write."""
    ref = fixture_path(reference).read_text()
    variables = {"bos_token": "<|begin_of_text|>", "eos_token": "</s>"}
    for agp, msgs in ((False, CONVO), (True, CONVO[:4])):
        ours = render(compile_template(BUILTIN_TEMPLATES[name]), msgs, variables, add_generation_prompt=agp)
        theirs = render(compile_template(ref), msgs, variables, add_generation_prompt=agp)
        if name == "chatml":
            assert ours == theirs
        else:  # these reference files are indented jinja that renders cosmetic whitespace
            assert "".join(ours.split()) == "".join(theirs.split())
            assert ours.count("\n") <= theirs.count("\n")


def test_alpaca_with_and_without_input():
    variables = {"eos_token": "</s>"}
    c = compile_template(BUILTIN_TEMPLATES["alpaca"])
    plain = render(
        c, [{"role": "user", "content": "Add 2+2"}, {"role": "assistant", "content": "4"}], variables
    )
    assert plain.startswith("Below is an instruction that describes a task. Write")
    assert "### Instruction:\nAdd 2+2\n\n### Response:\n4</s>" in plain
    assert "### Input:" not in plain
    with_input = render(
        c,
        [
            {"role": "user", "content": "Summarise", "input": "Long text."},
            {"role": "assistant", "content": "Short."},
        ],
        variables,
    )
    assert "paired with an input" in with_input
    assert "### Instruction:\nSummarise\n\n### Input:\nLong text.\n\n### Response:\nShort.</s>" in with_input
    sys_ = render(c, [{"role": "system", "content": "SYS"}, *CONVO[1:3]], variables)
    assert sys_.startswith("SYS\n\n### Instruction:")
