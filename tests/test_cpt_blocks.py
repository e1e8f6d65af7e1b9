"""Continued pretraining trains on every token read, not on the first max_length of each document."""

from __future__ import annotations

from collections import Counter

import pytest

from tests.conftest import fixture_path
from tuneline.config.template import TemplateConfig, TokenizeConfig
from tuneline.data.records import Record, RecordSet
from tuneline.tokenize import prepare_tokenizer, tokenize_dataset
from tuneline.tokenize.packing import unpack_row

L = 32


@pytest.fixture(scope="module")
def tok():
    """Llama-2's tokenizer: it adds BOS, so every document token after BOS is learnable."""
    from transformers import AutoTokenizer

    t = AutoTokenizer.from_pretrained(fixture_path("tokenizers/llama2-sentencepiece"))
    return prepare_tokenizer(t, TemplateConfig(name="zephyr"))


def doc(n_words: int, seed: int) -> str:
    words = ["river", "stone", "lantern", "ember", "north", "quiet", "harbour", "seven", "moss", "gale"]
    return " ".join(f"{words[(i * 7 + seed) % len(words)]}{i % 13}" for i in range(n_words))


def doc_ids(tok, text: str) -> list[int]:
    return tok(text)["input_ids"] + [tok.eos_token_id]  # BOS added by the tokenizer, EOS ends a document


def samples(split) -> list[tuple[list[int], list[int]]]:
    if split.position_ids is None:
        return list(zip(split.input_ids, split.labels, strict=True))
    out = []
    for ids, labels, pos in zip(split.input_ids, split.labels, split.position_ids, strict=True):
        out += unpack_row(ids, labels, pos)
    return out


@pytest.mark.parametrize("packing", [False, True])
def test_a_document_ten_times_max_length_is_trained_in_full(tok, packing):
    text = doc(200, 0)
    ids = doc_ids(tok, text)
    assert len(ids) > 10 * L
    td = tokenize_dataset(
        RecordSet(splits={"train": [Record(kind="text", text=text)]}),
        tok,
        TokenizeConfig(max_length=L, packing=packing),
    )
    split = td.splits["train"]
    assert all(len(row) <= L for row in split.input_ids)
    trained = [t for _ids, labels in samples(split) for t in labels if t != -100]
    # Every token after BOS is a label exactly once (BOS at position 0 is never predicted).
    assert Counter(trained) == Counter(ids[1:])
    assert td.stats["tokens_read"] == len(ids) and td.stats["tokens_trained"] == len(ids) - 1
    if not packing:  # plain blocks: consecutive, all full but the last, labels in document order
        assert trained == ids[1:]
        assert all(len(row) == L for row in split.input_ids[:-1])


@pytest.mark.parametrize("packing", [False, True])
def test_documents_are_separated_by_eos_and_none_is_lost(tok, packing):
    texts = [doc(90, 1), doc(5, 2), doc(40, 3)]
    td = tokenize_dataset(
        RecordSet(splits={"train": [Record(kind="text", text=t) for t in texts]}),
        tok,
        TokenizeConfig(max_length=L, packing=packing),
    )
    split = td.splits["train"]
    stream = [t for text in texts for t in doc_ids(tok, text)]
    trained = Counter(t for _ids, labels in samples(split) for t in labels if t != -100)
    if packing:  # each document stands alone: its BOS is never a target
        assert trained == Counter(stream) - Counter({tok.bos_token_id: len(texts)})
    else:  # one EOS-separated stream: the next document's BOS is predicted after the EOS
        assert trained == Counter(stream[1:])
    st = td.stats["train"]
    assert st["tokens_read"] == len(stream) and st["documents"] == 3
    assert st["tokens_trained"] == sum(trained.values()) == split.num_supervised
