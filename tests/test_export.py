"""Merged export: plain transformers loads it and it computes what base + adapter computes."""

from __future__ import annotations

import json
from pathlib import Path

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
    train(
        cfg,
        tok,
        tiny_data(8),
        output_dir=str(tmp_path / "out"),
        checkpoint_dir=str(tmp_path / "ckpt"),
        run_identity={"config_hash": "x"},
    )
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


CUSTOM_MODEL = """
from transformers import LlamaConfig, LlamaForCausalLM


class CustomLlamaConfig(LlamaConfig):
    model_type = "tuneline_custom_llama"


class CustomLlamaForCausalLM(LlamaForCausalLM):
    config_class = CustomLlamaConfig
"""
CUSTOM_TOKENIZER = """
from transformers import PreTrainedTokenizerFast


class CustomTokenizer(PreTrainedTokenizerFast):
    pass
"""


def _ships_its_own_code(d, tok, model=None):
    """Turn a saved tokenizer (and model) directory into one that names its classes in Python
    files shipped beside it (auto_map), as hub repos with custom code do."""
    (d / "custom_tok.py").write_text(CUSTOM_TOKENIZER)
    conf = json.loads((d / "tokenizer_config.json").read_text())
    conf["auto_map"] = {"AutoTokenizer": [None, "custom_tok.CustomTokenizer"]}
    (d / "tokenizer_config.json").write_text(json.dumps(conf))
    if model is not None:
        (d / "custom_llama.py").write_text(CUSTOM_MODEL)
        conf = json.loads((d / "config.json").read_text())
        conf["model_type"] = "tuneline_custom_llama"
        conf["auto_map"] = {
            "AutoConfig": "custom_llama.CustomLlamaConfig",
            "AutoModelForCausalLM": "custom_llama.CustomLlamaForCausalLM",
        }
        (d / "config.json").write_text(json.dumps(conf))


def test_merge_runs_custom_code_exactly_when_the_config_trusts_it(tmp_path):
    """model.trust_remote_code reaches every load of an export: the base model, and the
    tokenizer saved next to the adapter (it used to be loaded without it, so its own code was
    skipped even when the config trusted it)."""
    from peft import LoraConfig, get_peft_model

    from tuneline.config import ModelConfig

    tok = tiny_tokenizer()
    base_dir, adapter_dir = tmp_path / "base", tmp_path / "adapter"
    model = load_model(tiny_cfg().model, vocab_size=len(tok))
    model.save_pretrained(base_dir)
    tok.save_pretrained(base_dir)
    _ships_its_own_code(base_dir, tok, model)
    peft = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights=False))
    peft.save_pretrained(adapter_dir)
    tok.save_pretrained(adapter_dir)
    _ships_its_own_code(adapter_dir, tok)

    trusted = ModelConfig(name_or_path=str(base_dir), trust_remote_code=True)
    out = merge_lora(str(adapter_dir), trusted, str(tmp_path / "merged"))
    assert (tmp_path / "merged" / "model.safetensors").is_file() and Path(out).is_dir()
    conf = json.loads((tmp_path / "merged" / "config.json").read_text())
    assert conf["model_type"] == "tuneline_custom_llama"
    # The adapter's tokenizer ran its own class (it was silently replaced by the library's one,
    # and the export pointed at a custom_tok.py it did not contain).
    tok_conf = json.loads((tmp_path / "merged" / "tokenizer_config.json").read_text())
    assert tok_conf["tokenizer_class"] == "CustomTokenizer"
    assert (tmp_path / "merged" / "custom_tok.py").is_file()

    untrusted = ModelConfig(name_or_path=str(base_dir), trust_remote_code=False)
    with pytest.raises(ConfigError) as e:
        merge_lora(str(adapter_dir), untrusted, str(tmp_path / "refused"))
    assert e.value.problems[0].where == "model.trust_remote_code"
    assert "trust_remote_code=true" in str(e.value)
    assert not (tmp_path / "refused").exists()
