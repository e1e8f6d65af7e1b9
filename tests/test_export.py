"""Merged export: plain transformers loads it and it computes what base + adapter computes."""

from __future__ import annotations

import json

import pytest
import torch

from tests._train_script import tiny_cfg, tiny_data, tiny_tokenizer
from tuneline.errors import ConfigError
from tuneline.export import merge_lora
from tuneline.train import train
from tuneline.train.loading import load_model


@pytest.mark.parametrize("lora", [{}, {"use_dora": True, "use_rslora": True}])
def test_merge_round_trip_matches_the_peft_model(tmp_path, lora):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    tok = tiny_tokenizer()
    cfg = tiny_cfg(
        method="lora", max_steps=3, learning_rate=5e-2, warmup_ratio=0, merge_adapter=True, lora=lora
    )
    result = train(
        cfg,
        tok,
        tiny_data(8),
        output_dir=str(tmp_path / "out"),
        checkpoint_dir=str(tmp_path / "ckpt"),
        run_identity={"config_hash": "x"},
    )
    assert result.merged_dir == str(tmp_path / "out" / "merged")
    merged_dir = tmp_path / "out" / "merged"
    assert (merged_dir / "model.safetensors").is_file() and not list(merged_dir.glob("*.bin"))
    assert not (merged_dir / "adapter_config.json").exists()

    peft = PeftModel.from_pretrained(load_model(cfg.model, vocab_size=len(tok)), str(tmp_path / "out")).eval()
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    base = load_model(cfg.model, vocab_size=len(tok)).eval()
    ids = torch.tensor([tok("the cat sat on the mat and the dog ran")["input_ids"]])
    with torch.no_grad():
        lp, lm, lb = peft(ids).logits, merged(ids).logits, base(ids).logits
    assert (lp - lb).abs().max() > 1e-3, "the adapter must matter, or the comparison proves nothing"
    torch.testing.assert_close(lm, lp, atol=1e-5, rtol=0)
    assert json.loads((merged_dir / "config.json").read_text())["use_cache"] is True


def test_merge_lora_standalone_and_rejects_non_adapters(tmp_path):
    tok = tiny_tokenizer()
    cfg = tiny_cfg(method="lora", max_steps=1)
    train(
        cfg,
        tok,
        tiny_data(8),
        output_dir=str(tmp_path / "out"),
        checkpoint_dir=str(tmp_path / "ckpt"),
        run_identity={},
    )
    out = merge_lora(str(tmp_path / "out"), cfg.model, str(tmp_path / "m"))
    assert (tmp_path / "m" / "model.safetensors").is_file() and (tmp_path / "m" / "tokenizer.json").is_file()
    with pytest.raises(ConfigError, match=r"adapter_config\.json"):
        merge_lora(out, cfg.model, str(tmp_path / "again"))
