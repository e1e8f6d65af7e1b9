"""Preference pairs go through the SFT rendering and encoding, and TRL trains on exactly those ids.

Llama-2's tokenizer adds BOS but the Zephyr template does not write one, and both know
"</s>" and "<s>" as control tokens: the pair where TRL's own tokenization and ours part.
"""

from __future__ import annotations

import copy

import pytest
import torch

from tests.conftest import fixture_path
from tuneline.config.template import TemplateConfig, TokenizeConfig
from tuneline.data.records import Record
from tuneline.evaluate.generate import preference_scores
from tuneline.tokenize import (
    PretokenizedPreferences,
    preference_dataset,
    prepare_tokenizer,
    tokenize_preference_split,
    tokenize_split,
)

TYPED = "Is </s> a tag? Say <s> too."


def pair(prompt: str, chosen: str, rejected: str, system: str | None = None) -> Record:
    msgs = [{"role": "system", "content": system}] if system else []
    return Record(
        kind="preference",
        messages=[*msgs, {"role": "user", "content": prompt}],
        chosen=[{"role": "assistant", "content": chosen}],
        rejected=[{"role": "assistant", "content": rejected}],
        meta={"source": "prefs.jsonl", "line": 1},
    )


@pytest.fixture
def zephyr_llama2(tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(fixture_path("tokenizers/llama2-sentencepiece"))
    (tmp_path / "z.jinja").write_text(
        fixture_path("chat_templates/chujiezheng/chat_templates/zephyr.jinja").read_text()
    )
    return prepare_tokenizer(tok, TemplateConfig(jinja_path="z.jinja"), str(tmp_path))


def tiny_llama(vocab_size: int, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    conf = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=256,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(conf)


def seen_sequences(model) -> tuple[list[list[int]], object]:
    """Every unpadded input_ids row the model is run on, in order."""
    seen: list[list[int]] = []

    def hook(_module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        mask = kwargs.get("attention_mask")
        for k, row in enumerate(ids.tolist()):
            n = int(mask[k].sum()) if mask is not None else len(row)
            seen.append(row[:n])

    return seen, model.register_forward_pre_hook(hook, with_kwargs=True)


def test_pair_ids_have_one_bos_and_typed_specials_stay_text(zephyr_llama2):
    tok = zephyr_llama2
    cfg = TokenizeConfig(max_length=256)
    rows = tokenize_preference_split([pair(TYPED, "Yes it is.", "No.")], tok, cfg)
    (row,) = rows
    p, c, r = row["prompt_ids"], row["chosen_ids"], row["rejected_ids"]
    assert p[0] == tok.bos_token_id and (p + c).count(tok.bos_token_id) == 1
    assert p.count(tok.eos_token_id) == 1  # the template's end of the user turn; the typed "</s>" is text
    assert rows.stats["special_tokens_escaped"] == 4  # "</s>" and "<s>", in the chosen and rejected renders
    assert c[-1] == tok.eos_token_id and r[-1] == tok.eos_token_id  # completions end with the end of turn
    assert "</s>" in tok.decode(p) and tok.decode(c, skip_special_tokens=True).strip() == "Yes it is."
    # Exactly SFT's ids for the same conversation: prompt context, then the supervised turn.
    sft = tokenize_split(
        [
            Record(
                messages=[{"role": "user", "content": TYPED}, {"role": "assistant", "content": "Yes it is."}]
            )
        ],
        tok,
        cfg,
    )
    ids, labels = sft.input_ids[0], sft.labels[0]
    assert ids[: len(p) + len(c)] == p + c
    assert [t for t in labels if t != -100] == c


def test_overflow_policies_apply_to_pairs(zephyr_llama2):
    tok = zephyr_llama2
    long = pair("q", "word " * 100, "short")
    ok = pair("q", "fine", "bad")
    rows = tokenize_preference_split([long, ok], tok, TokenizeConfig(max_length=40, overflow="drop"))
    assert len(rows) == 1 and rows.stats["dropped_too_long"] == 1
    rows = tokenize_preference_split([long, ok], tok, TokenizeConfig(max_length=40))
    assert rows.stats["truncated"] == 1 and len(rows) == 2
    cut = rows[0]
    assert len(cut["prompt_ids"]) + len(cut["chosen_ids"]) == 40 and cut["chosen_ids"][-1] == tok.eos_token_id


@pytest.mark.parametrize("method", ["dpo", "orpo"])
def test_trl_trains_on_exactly_our_ids(method, zephyr_llama2, tmp_path):
    tok = zephyr_llama2
    pairs = [
        pair(TYPED, "Yes, it is a tag.", "No."),
        pair("Name a colour.", "Blue.", "I will not <s> answer."),
    ]
    rows = tokenize_preference_split(pairs, tok, TokenizeConfig(max_length=128))
    model = tiny_llama(len(tok))
    common = {
        "output_dir": str(tmp_path / "out"),
        "max_steps": 2,
        "per_device_train_batch_size": 2,
        "learning_rate": 1e-3,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": [],
        "use_cpu": True,
        "max_length": 128,
        "beta": 0.1,
    }
    if method == "dpo":
        from trl import DPOConfig as ConfigCls
        from trl import DPOTrainer as TrainerCls

        extra = {"ref_model": copy.deepcopy(model)}
    else:
        from trl.experimental.orpo import ORPOConfig as ConfigCls
        from trl.experimental.orpo import ORPOTrainer as TrainerCls

        extra = {}

    class Trainer(PretokenizedPreferences, TrainerCls):  # type: ignore[misc,valid-type]
        pass

    trainer = Trainer(
        model=model,
        args=ConfigCls(**common),
        train_dataset=preference_dataset(rows, method),
        processing_class=tok,
        **extra,
    )
    seen, handle = seen_sequences(trainer.model)
    try:
        trainer.train()
    finally:
        handle.remove()
    assert trainer.state.global_step == 2
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(x)) for x in losses)
    expected = {tuple(r["prompt_ids"] + r[k]) for r in rows for k in ("chosen_ids", "rejected_ids")}
    assert seen and {tuple(s) for s in seen} == expected
    for s in seen:  # one BOS; EOS only where the template ends a turn, never the typed "</s>"
        assert s.count(tok.bos_token_id) == 1 and s.count(tok.eos_token_id) == 2


def test_evaluation_scores_the_ids_training_uses(zephyr_llama2):
    tok = zephyr_llama2
    pairs = [pair(TYPED, "Yes.", "No."), pair("Colour?", "Blue.", "I refuse <s> to.")]
    rows = tokenize_preference_split(pairs, tok, TokenizeConfig(max_length=128))
    model = tiny_llama(len(tok)).eval()
    seen, handle = seen_sequences(model)
    try:
        scores = preference_scores(model, tok, pairs, TokenizeConfig(max_length=128))
    finally:
        handle.remove()
    assert [tuple(s) for s in seen] == [
        tuple(r["prompt_ids"] + r[k]) for r in rows for k in ("chosen_ids", "rejected_ids")
    ]
    assert set(scores) == {
        "preference_accuracy",
        "logprob_margin",
        "preference_accuracy_normalized",
        "logprob_margin_normalized",
    }


def test_length_normalised_accuracy_does_not_reward_short_answers(zephyr_llama2):
    """A model that likes every token of the long chosen answer still loses on summed log-probs."""
    tok = zephyr_llama2
    yes = tok.convert_tokens_to_ids("▁yes")
    model = tiny_llama(len(tok)).eval()
    # Logits independent of the input: "yes" is e^6 times likelier than any other token.
    head = torch.nn.Linear(16, len(tok), bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.bias[yes] = 6.0
    model.lm_head = head
    long_yes = pair("Agree?", "yes " * 12, "nah")
    scores = preference_scores(model, tok, [long_yes], TokenizeConfig(max_length=128))
    assert scores["preference_accuracy"] == 0.0 and scores["logprob_margin"] < -10
    assert scores["preference_accuracy_normalized"] == 1.0 and scores["logprob_margin_normalized"] > 1


@pytest.mark.parametrize("method", ["dpo", "orpo"])
def test_the_training_recipe_hands_trl_the_same_ids(method, zephyr_llama2, tmp_path):
    """Through `tuneline.train.train` itself: what the model runs on is exactly
    `tokenize_preference_split`'s ids (one BOS, typed specials stay text), not TRL's own encoding."""
    import torch

    from tests._train_script import tiny_cfg
    from tuneline.data.records import RecordSet
    from tuneline.train import train

    tok = zephyr_llama2
    pairs = [
        pair(TYPED, "Yes, it is a tag.", "No."),
        pair("Name a colour.", "Blue.", "I will not <s> answer."),
    ]
    rows = tokenize_preference_split(pairs, tok, TokenizeConfig(max_length=128))
    expected = {tuple(r["prompt_ids"] + r[k]) for r in rows for k in ("chosen_ids", "rejected_ids")}
    seen: list[list[int]] = []
    pad = tok.pad_token_id
    assert pad not in {t for ids in expected for t in ids}

    def hook(module, args, _output):
        # The token embedding sees every row the model runs on; padding is the only thing stripped.
        if isinstance(module, torch.nn.Embedding) and module.num_embeddings == len(tok):
            seen.extend([t for t in row if t != pad] for row in args[0].tolist())

    cfg = tiny_cfg(method=method, adapter="none", max_steps=2, batch_size=2, save_steps=10)
    cfg.tokenize.max_length = 128
    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        train(
            cfg,
            tok,
            RecordSet(splits={"train": pairs}),
            output_dir=str(tmp_path / "out"),
            checkpoint_dir=str(tmp_path / "ckpt"),
            run_identity={"config_hash": "c", "data_fingerprint": "d", "base_model": "tiny"},
        )
    finally:
        handle.remove()
    assert seen and {tuple(s) for s in seen} == expected
