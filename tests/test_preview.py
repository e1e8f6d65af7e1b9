"""Preview: what a person inspects is exactly what the trainer gets."""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from tuneline.config.template import TemplateConfig, TokenizeConfig
from tuneline.data.records import Record, RecordSet
from tuneline.tokenize import prepare_tokenizer, tokenize_dataset
from tuneline.tokenize.collate import split_rows
from tuneline.tokenize.preview import preview_json_lines, render_preview


@pytest.fixture
def td(tiny_tokenizer_dir):
    tok = prepare_tokenizer(AutoTokenizer.from_pretrained(tiny_tokenizer_dir), TemplateConfig(), ".")
    recs = [
        Record(
            messages=[{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"answer {i}"}]
        )
        for i in range(6)
    ]
    return tok, recs


def test_render_preview_marks_supervised_spans(td):
    tok, recs = td
    data = tokenize_dataset(RecordSet(splits={"train": recs}), tok, TokenizeConfig(packing=False))
    out = render_preview(data, tok, 2, color=False)
    assert out.count("── example") == 2
    assert "⟦answer 0<|im_end|>⟧" in out
    prompt_part = out.split("── example 0")[1].split("⟦answer 0")[0]
    assert "q0" in prompt_part and "⟦" not in prompt_part  # the prompt is not supervised
    colored = render_preview(data, tok, 1, color=True)
    assert "\x1b[1;32m⟦answer 0<|im_end|>⟧\x1b[0m" in colored


def test_json_lines_are_exactly_the_trainer_rows(td):
    tok, recs = td
    data = tokenize_dataset(RecordSet(splits={"train": recs}), tok, TokenizeConfig(packing=False))
    lines = preview_json_lines(data, tok, 3)
    rows = split_rows(data.splits["train"])[:3]
    assert len(lines) == 3
    for line, row in zip(lines, rows, strict=True):
        obj = json.loads(line)
        assert set(obj) == {"text", "input_ids", "labels"}
        assert obj["input_ids"] == row["input_ids"] and obj["labels"] == row["labels"]
        assert obj["text"] == tok.decode(row["input_ids"])


def test_packed_preview_shows_samples_and_position_ids(td):
    tok, recs = td
    data = tokenize_dataset(
        RecordSet(splits={"train": recs}), tok, TokenizeConfig(max_length=64, packing=True)
    )
    out = render_preview(data, tok, 1, color=False)
    assert "packed row of" in out and "next sample" in out
    obj = json.loads(preview_json_lines(data, tok, 1)[0])
    assert obj["position_ids"] == data.splits["train"].position_ids[0]
