"""LoRA with a template that adds control tokens learns to stop.

chatml on a base model whose vocabulary lacks `<|im_start|>`/`<|im_end|>`: the tokenizer
grows, the model's embedding and output head grow with random rows, and a LoRA adapter on
the linear layers alone would leave them random. The base here is "pretrained": a tiny
Llama built from config, trained briefly on plain text with a tokenizer WITHOUT the chatml
tokens and saved with it, exactly what a hub base model looks like to the recipe.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from tests._train_script import TINY_MODEL, TINY_TOKENIZER
from tuneline.config import ProjectConfig
from tuneline.train import train
from tuneline.train.loading import load_model, load_tokenizer

CHATML_TOKENS = ("<|im_start|>", "<|im_end|>")
# One-token answers (names in the tiny tokenizer's vocabulary): the test is about stopping,
# so the answers themselves are easy to learn.
QA = [
    ("who keeps the gate", "Dorara"),
    ("who keeps the river", "Fenara"),
    ("who keeps the tower", "Velara"),
    ("who keeps the forest", "Luman"),
    ("who keeps the harbor", "Solia"),
    ("who keeps the mountain", "Thalan"),
]
IDENTITY = {"config_hash": "new-tokens", "data_fingerprint": "d", "base_model": "pretrained-tiny"}


def _tokenizer_without_chatml(dest: Path) -> None:
    """The tiny tokenizer with its two chatml tokens removed (ids above them shift down)."""
    tj = json.loads((TINY_TOKENIZER / "tokenizer.json").read_text())
    drop = {t["id"] for t in tj["added_tokens"] if t["content"] in CHATML_TOKENS}

    def new_id(i: int) -> int:
        return i - sum(1 for d in drop if d < i)

    tj["added_tokens"] = [{**t, "id": new_id(t["id"])} for t in tj["added_tokens"] if t["id"] not in drop]
    vocab = tj["model"]["vocab"]
    tj["model"]["vocab"] = {tok: new_id(i) for tok, i in vocab.items() if i not in drop}
    conf = json.loads((TINY_TOKENIZER / "tokenizer_config.json").read_text())
    conf.pop("extra_special_tokens", None)
    dest.mkdir(parents=True)
    (dest / "tokenizer.json").write_text(json.dumps(tj))
    (dest / "tokenizer_config.json").write_text(json.dumps(conf))


def _pretrained_base(root: Path, tied: bool) -> Path:
    """Train a from-config tiny Llama on plain text (cpt) and keep it with its chatml-free tokenizer."""
    from transformers import AutoTokenizer

    from tuneline.tokenize import TokenizedDataset, TokenizedSplit

    tok_dir = root / "tok"
    _tokenizer_without_chatml(tok_dir)
    tok = AutoTokenizer.from_pretrained(tok_dir)
    assert not set(CHATML_TOKENS) & set(tok.get_vocab()), "the base vocabulary has no chatml tokens"
    texts = [f"{q} ? {a} ." for q, a in QA] * 4
    ids = [tok(t)["input_ids"] + [tok.eos_token_id] for t in texts]
    data = TokenizedDataset(splits={"train": TokenizedSplit(ids, [list(r) for r in ids])})
    cfg = ProjectConfig.model_validate(
        {
            "model": {"from_config": {**TINY_MODEL, "tie_word_embeddings": tied}, "tokenizer": str(tok_dir)},
            "data": {"path": "unused.jsonl"},
            "train": {
                "method": "cpt",
                "max_steps": 4,  # a saved, trained model is what matters, not how much it knows
                "batch_size": 8,
                "learning_rate": 3e-3,
                "save_steps": 1000,
            },
        }
    )
    out = root / "base"
    train(cfg, tok, data, output_dir=str(out), checkpoint_dir=str(root / "base-ckpt"), run_identity={})
    for junk in ("tuneline_train.json",):
        (out / junk).unlink()
    shutil.rmtree(root / "base-ckpt")
    return out


def _sft_cfg(base: Path, **train_overrides) -> ProjectConfig:
    return ProjectConfig.model_validate(
        {
            "model": {"name_or_path": str(base)},
            "data": {"path": "unused.jsonl"},
            "template": {"name": "chatml"},
            "tokenize": {"max_length": 64},
            "train": {
                "method": "lora",
                "max_steps": 40,
                "batch_size": 6,
                "learning_rate": 5e-3,
                "warmup_ratio": 0,
                "save_steps": 1000,
                "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
                **train_overrides,
            },
        }
    )


def _records():
    from tuneline.data.records import Record, RecordSet

    recs = [
        Record(messages=[{"role": "user", "content": q}, {"role": "assistant", "content": a}]) for q, a in QA
    ]
    return RecordSet(splits={"train": recs})


def _greedy(model, tok, question: str, stop_id: int) -> list[int]:
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False
    )
    ids = torch.tensor([tok(prompt, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=12,
            do_sample=False,
            eos_token_id=stop_id,
            pad_token_id=tok.pad_token_id,
        )
    return out[0, ids.shape[1] :].tolist()


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_lora_trains_the_rows_of_added_control_tokens_and_learns_to_stop(tmp_path, tied):
    from peft import PeftModel
    from safetensors.torch import load_file

    from tuneline.export import merge_lora
    from tuneline.tokenize import prepare_tokenizer, tokenize_dataset

    base_dir = _pretrained_base(tmp_path, tied)
    cfg = _sft_cfg(base_dir)
    tok = prepare_tokenizer(load_tokenizer(cfg.model), cfg.template)
    assert tok.tuneline_prep["added_tokens"] == list(CHATML_TOKENS)
    end = tok.convert_tokens_to_ids("<|im_end|>")
    new_ids = sorted(tok.convert_tokens_to_ids(t) for t in CHATML_TOKENS)
    base = load_model(cfg.model)
    old_rows = base.get_input_embeddings().num_embeddings
    assert new_ids == [old_rows, old_rows + 1] and len(tok) == old_rows + 2

    data = tokenize_dataset(_records(), tok, cfg.tokenize)
    out = tmp_path / "out"
    train(cfg, tok, data, output_dir=str(out), checkpoint_dir=str(tmp_path / "ckpt"), run_identity=IDENTITY)

    # The adapter carries the new rows (and only them) besides LoRA, not the whole embedding.
    adapter = load_file(out / "adapter_model.safetensors")
    token_keys = [k for k in adapter if "trainable_tokens" in k]
    assert token_keys and all(adapter[k].shape[0] == len(new_ids) for k in token_keys), token_keys
    assert all("lora_" in k or "trainable_tokens" in k for k in adapter), sorted(adapter)
    assert json.loads((out / "tuneline_train.json").read_text())["trained_token_rows"] == new_ids

    # The rows training started from: the recipe's own setup, seeded as train() seeds it.
    from transformers import set_seed

    from tuneline.train.models import build_model

    set_seed(cfg.train.seed)
    initial = build_model(cfg, tok, "fp32").model.merge_and_unload().state_dict()

    # Reload exactly as evaluation/export do: the base grown to the tokenizer, the adapter on top.
    def reloaded():
        return PeftModel.from_pretrained(load_model(cfg.model, vocab_size=len(tok)), str(out)).eval()

    merged = reloaded().merge_and_unload().state_dict()
    base_state = base.state_dict()
    heads = ("embed_tokens.weight", "lm_head.weight")
    assert sum(name.endswith(heads) for name in merged) == 2
    for name, w in merged.items():
        if name.endswith(heads):
            assert torch.equal(w[:old_rows], base_state[name]), f"{name}: a pretrained row changed"
            assert torch.equal(initial[name][:old_rows], base_state[name])
            for i in new_ids:
                assert not torch.equal(w[i], initial[name][i]), f"{name} row {i} was not trained"
        elif not name.endswith("_proj.weight"):  # LoRA adapts every linear projection
            assert torch.equal(w, base_state[name]), f"{name} changed though nothing trains it"

    # The trained rows are what the adapter restores, not a new random draw: the reloaded model
    # closes every training answer with the end-of-turn token. Teacher-forced it is the top
    # choice where the turn ends (by a logit margin of ~5 after 40 steps, ~10 after 80), and
    # greedy decoding from each training prompt ends with it. Which answer comes first is not
    # checked: not the point here.
    model = reloaded()
    tok_out = load_tokenizer(cfg.model.model_copy(update={"tokenizer": str(out)}))
    for q, a in QA:
        turn = [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        ids = tok_out(tok_out.apply_chat_template(turn, tokenize=False), add_special_tokens=False)[
            "input_ids"
        ]
        stop_at = max(i for i, t in enumerate(ids) if t == end)
        with torch.no_grad():
            assert model(torch.tensor([ids[:stop_at]])).logits[0, -1].argmax().item() == end, q
        gen = _greedy(model, tok_out, q, end)
        assert gen[-1] == end, (q, tok_out.decode(gen))

    merged_dir = merge_lora(str(out), cfg.model, str(tmp_path / "merged"))
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    assert plain.get_input_embeddings().num_embeddings == len(tok)
    assert _greedy(plain, tok_out, QA[0][0], end)[-1] == end
