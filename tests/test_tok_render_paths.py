"""One rendering for every caller: SFT, the formatted examples, evaluation prompts, preference pairs.

Gemma's real template rejects a system role; alpaca's renders a separate input block.
Both used to work in SFT tokenization only, or nowhere.
"""

from __future__ import annotations

import pytest

from tests.conftest import fixture_path
from tuneline.config import DataConfig, ModelConfig, SourceConfig
from tuneline.config.template import TemplateConfig, TokenizeConfig
from tuneline.data import load_records
from tuneline.data.records import Record, RecordSet
from tuneline.evaluate.generate import generate_answers, preference_scores
from tuneline.tokenize import (
    prepare_tokenizer,
    render_conversation,
    tokenize_preference_split,
    tokenize_split,
)

SYS = "You are SYSMARKER."
TINY = {
    "model_type": "llama",
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "max_position_embeddings": 256,
}


def _decode(tok, ids):
    return tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


@pytest.fixture
def gemma(tmp_path, tiny_tokenizer_dir):
    """The tiny tokenizer with Gemma's turn tokens, saved like a model's tokenizer, + Gemma's template."""
    from tokenizers import AddedToken
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    tok.add_tokens(
        [AddedToken(t, special=True, normalized=False) for t in ("<start_of_turn>", "<end_of_turn>")],
        special_tokens=True,
    )
    tok.save_pretrained(tmp_path / "tok")
    jinja = tmp_path / "gemma.jinja"
    jinja.write_text(fixture_path("chat_templates/from_tokenizer_configs/gemma-it.jinja").read_text())
    tok = prepare_tokenizer(tok, TemplateConfig(jinja_path=str(jinja)), str(tmp_path))
    return tok, tmp_path


def chat_with_system(q: str = "Name a colour.", a: str = "Blue.") -> Record:
    return Record(
        messages=[
            {"role": "system", "content": SYS},
            {"role": "user", "content": q},
            {"role": "assistant", "content": a},
        ],
        meta={"source": "d.jsonl", "line": 1},
    )


def test_format_records_examples_fold_the_system_turn_like_training(gemma):
    from steps.format_records import format_records

    tok, tmp = gemma
    rec = chat_with_system()
    template, md = format_records.entrypoint(
        dataset=RecordSet(splits={"train": [rec]}),
        model_config=ModelConfig(from_config=TINY, tokenizer=str(tmp / "tok")),
        template_config=TemplateConfig(jinja_path="gemma.jinja"),
        base_dir=str(tmp),
        local_files_fingerprint="test",
    )
    assert template == tok.chat_template
    sft = tokenize_split([rec], tok, TokenizeConfig())
    trained_text = _decode(tok, sft.input_ids[0])
    assert f"<start_of_turn>user\n{SYS}\n\nName a colour.<end_of_turn>" in trained_text
    example = str(md).split("```")[1].strip("\n")
    assert example == trained_text.rstrip("\n") == render_conversation(tok, rec.messages).rstrip("\n")


def test_evaluation_prompts_and_preference_pairs_work_with_a_system_turn(gemma):
    from transformers import AutoConfig, AutoModelForCausalLM

    tok, _tmp = gemma
    conf = AutoConfig.for_model(**{**TINY, "vocab_size": len(tok)})
    model = AutoModelForCausalLM.from_config(conf).eval()
    gen = generate_answers(model, tok, [chat_with_system()], max_new_tokens=2)
    assert gen.prompts[0].endswith(
        f"<start_of_turn>user\n{SYS}\n\nName a colour.<end_of_turn>\n<start_of_turn>model\n"
    )

    pref = Record(
        kind="preference",
        messages=[{"role": "system", "content": SYS}, {"role": "user", "content": "Colour?"}],
        chosen=[{"role": "assistant", "content": "Blue."}],
        rejected=[{"role": "assistant", "content": "No."}],
    )
    (row,) = tokenize_preference_split([pref], tok, TokenizeConfig())
    assert _decode(tok, row["prompt_ids"]).endswith(
        f"<start_of_turn>user\n{SYS}\n\nColour?<end_of_turn>\n<start_of_turn>model\n"
    )
    assert _decode(tok, row["chosen_ids"]) == "Blue.<end_of_turn>"
    scores = preference_scores(model, tok, [pref])
    assert set(scores) >= {"preference_accuracy", "preference_accuracy_normalized"}


def test_alpaca_input_is_its_own_block_only_under_the_alpaca_template(tmp_path, tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    row = {"instruction": "Summarise the text.", "input": "Rivers run to the sea.", "output": "Water flows."}
    rs = load_records(DataConfig(sources=[SourceConfig(records=[row])], validation_split=0), str(tmp_path))
    (rec,) = rs.splits["train"]

    alpaca = prepare_tokenizer(
        AutoTokenizer.from_pretrained(tiny_tokenizer_dir), TemplateConfig(name="alpaca")
    )
    text = _decode(alpaca, tokenize_split([rec], alpaca, TokenizeConfig()).input_ids[0])
    assert "paired with an input that provides further context" in text
    assert (
        "### Instruction:\nSummarise the text.\n\n### Input:\nRivers run to the sea.\n\n"
        "### Response:\nWater flows.<|endoftext|>" in text
    )

    chatml = prepare_tokenizer(
        AutoTokenizer.from_pretrained(tiny_tokenizer_dir), TemplateConfig(name="chatml")
    )
    text = _decode(chatml, tokenize_split([rec], chatml, TokenizeConfig()).input_ids[0])
    assert "<|im_start|>user\nSummarise the text.\n\nRivers run to the sea.<|im_end|>" in text
    assert "### Input" not in text
