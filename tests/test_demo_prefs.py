"""The shipped DPO demo pairs (`data/lorekeep_prefs.jsonl`) are built so the SFT model cannot
already prefer the chosen side: both sides carry the same true answer, and differ only in a
closing the chat data never shows, matched in length. These check that design on the files
and the tiny tokenizer; what DPO then learns is training outcome and is not asserted here.
"""

from __future__ import annotations

import importlib.util
import json
import random

import pytest

from tests.conftest import ROOT


@pytest.fixture(scope="module")
def demo():
    spec = importlib.util.spec_from_file_location("make_demo_data", ROOT / "scripts" / "make_demo_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _jsonl(name: str) -> list[dict]:
    return [json.loads(line) for line in (ROOT / "data" / name).read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def pairs() -> list[dict]:
    return _jsonl("lorekeep_prefs.jsonl")


def test_shipped_pairs_are_what_the_generator_writes(demo, pairs):
    world = demo.realms(random.Random(1234), 30)
    assert demo.preference_pairs(world, random.Random(99)) == pairs


def test_both_sides_carry_the_answer_the_sft_data_teaches(pairs):
    taught = {
        m["content"] for row in _jsonl("lorekeep.jsonl") for m in row["messages"] if m["role"] == "assistant"
    }
    for p in pairs:
        assert [m["role"] for m in p["prompt"]] == ["user"]
        answer = p["chosen"][: p["chosen"].index(".") + 1]
        assert answer in taught, p
        assert p["rejected"].startswith(answer + " ") and p["chosen"] != p["rejected"], p


def test_closings_are_unseen_in_sft_data_matched_in_length_and_balanced(demo, pairs, tiny_tokenizer):
    sft_text = (ROOT / "data" / "lorekeep.jsonl").read_text()
    kind, curt = zip(*demo.CLOSINGS, strict=True)
    assert not set(kind) & set(curt)
    for closing in kind + curt:
        assert closing not in sft_text, (
            f"{closing!r} appears in the SFT data: the SFT model is not neutral on it"
        )
    for k, c in demo.CLOSINGS:
        # Summed log-probs favour fewer tokens; equal counts leave the SFT model no length preference.
        assert len(tiny_tokenizer(" " + k)["input_ids"]) == len(tiny_tokenizer(" " + c)["input_ids"]), (k, c)
    used = [(p["chosen"].split(". ", 1)[1], p["rejected"].split(". ", 1)[1]) for p in pairs]
    assert set(used) == set(demo.CLOSINGS)
    counts = [used.count(pair) for pair in demo.CLOSINGS]
    assert max(counts) - min(counts) <= 1, counts


def test_pairs_load_as_preference_records_with_a_held_out_split(root):
    from tuneline.config import load_config
    from tuneline.data.loader import load_records

    cfg = load_config(root / "configs" / "dpo.yaml")
    records = load_records(cfg.data, cfg.base_dir, kind="preference")
    assert {r.kind for split in records.splits.values() for r in split} == {"preference"}
    assert len(records.splits["validation"]) >= 15
    assert sum(len(s) for s in records.splits.values()) == 150
