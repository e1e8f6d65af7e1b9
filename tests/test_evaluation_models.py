"""Evaluation on real tiny models: loss definition, stopping, BOS, adapter loading, gates."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import TINY_EVAL_MODEL, chat, fixture_path, tiny_project
from tuneline.config import RegistryConfig
from tuneline.evaluate.generate import eval_loss, generate_answers, load_start_model, load_trained_model
from tuneline.tokenize import (
    encode_for_inference,
    end_of_turn_token_ids,
    prepare_tokenizer,
    tokenize_split,
)
from tuneline.tracking import registration_refusal


def test_eval_loss_is_the_mean_over_supervised_tokens(tmp_path, tiny_tokenizer):
    from tuneline.config import TokenizeConfig
    from tuneline.tokenize.collate import DataCollator

    cfg = tiny_project(tmp_path)
    tok = prepare_tokenizer(tiny_tokenizer, cfg.template, cfg.base_dir)
    split = tokenize_split(
        [chat("What is the capital?", "Frostholt."), chat("Who rules?", "Queen Ilsa.")], tok, TokenizeConfig()
    )
    model = load_start_model(cfg, len(tok))
    got = eval_loss(model, split, DataCollator(pad_token_id=tok.pad_token_id, packed=False), batch_size=2)
    # Reference: one sample at a time through the model's own loss, weighted by its token count.
    total, count = 0.0, 0
    for ids, labels in zip(split.input_ids, split.labels, strict=True):
        out = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels]))
        n = sum(1 for t in labels[1:] if t != -100)
        total, count = total + out.loss.item() * n, count + n
    assert got == pytest.approx(total / count, rel=1e-5)


def test_generation_stops_at_the_end_of_turn_token(tmp_path, tiny_tokenizer):
    cfg = tiny_project(tmp_path)
    tok = prepare_tokenizer(tiny_tokenizer, cfg.template, cfg.base_dir)
    end = tok.convert_tokens_to_ids("<|im_end|>")
    assert end in end_of_turn_token_ids(tok)
    model = load_start_model(cfg, len(tok))
    with torch.no_grad():  # make <|im_end|> the only thing the model ever says
        model.lm_head.weight.zero_()
        model.lm_head.weight[end] = 1.0
        model.model.norm.weight.fill_(1.0)
    out = generate_answers(model, tok, [chat("hello", "x")], max_new_tokens=8, stop_token_ids=[end])
    assert out.predictions == [""]


def test_inference_prompts_get_bos_like_training(tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(fixture_path("tokenizers/llama2-sentencepiece"))
    text = "<|user|>\nhi</s>\n<|assistant|>\n"
    ids = encode_for_inference(tok, text)
    assert ids[0] == tok.bos_token_id and ids[1] != tok.bos_token_id
    assert encode_for_inference(tok, "<s>" + text).count(tok.bos_token_id) == 1


def test_adapter_is_loaded_on_the_base_it_was_trained_on(tmp_path, tiny_tokenizer):
    from peft import LoraConfig, get_peft_model

    cfg = tiny_project(tmp_path, train={"method": "lora"})
    tok = prepare_tokenizer(tiny_tokenizer, cfg.template, cfg.base_dir)
    base = load_start_model(cfg, len(tok))
    peft = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    out = tmp_path / "adapter"
    peft.save_pretrained(out)
    (out / "tuneline_train.json").write_text(json.dumps({"base_model": cfg.model.model_dump(mode="json")}))
    ids = torch.tensor([[5, 6, 7, 8]])
    expected = peft(input_ids=ids).logits
    loaded = load_trained_model(cfg, out, len(tok))
    assert torch.allclose(loaded(input_ids=ids).logits, expected, atol=1e-5)
    # A different recorded base gives different logits: the record is really used.
    other = {**cfg.model.model_dump(mode="json"), "init_seed": 7}
    (out / "tuneline_train.json").write_text(json.dumps({"base_model": other}))
    assert not torch.allclose(
        load_trained_model(cfg, out, len(tok))(input_ids=ids).logits, expected, atol=1e-3
    )


@pytest.mark.parametrize(
    ("tuned", "base", "min_gain", "refused"),
    [
        ({"rougeL": 0.6}, {"rougeL": 0.2}, 0.0, False),
        ({"rougeL": 0.1}, {"rougeL": 0.2}, 0.0, True),  # worse than its base: never registered
        ({"rougeL": 0.25}, {"rougeL": 0.2}, 0.1, True),
        ({"rougeL": float("nan")}, {}, 0.0, True),
        ({}, {}, 0.0, True),
    ],
)
def test_registration_gate(tuned, base, min_gain, refused):
    reg = RegistryConfig(metric="rougeL", greater_is_better=True, min_improvement_over_base=min_gain)
    assert (registration_refusal(reg, tuned, base, evaluated=True) is not None) == refused


def test_registration_gate_lower_is_better():
    reg = RegistryConfig(metric="eval_loss", greater_is_better=False)
    assert registration_refusal(reg, {"eval_loss": 1.0}, {"eval_loss": 5.0}, evaluated=True) is None
    assert registration_refusal(reg, {"eval_loss": 6.0}, {"eval_loss": 5.0}, evaluated=True)


REMOTE_CONFIG = """from transformers import LlamaConfig


class RemoteConfig(LlamaConfig):
    model_type = "tuneline_remote_llama"
"""
REMOTE_MODEL = """from transformers import LlamaForCausalLM

from .configuration_remote import RemoteConfig


class RemoteForCausalLM(LlamaForCausalLM):
    config_class = RemoteConfig
"""


@pytest.fixture
def remote_code_model(tmp_path, monkeypatch):
    """A local model directory whose config names its own Python classes (auto_map): loading it
    runs that code, so it loads only with trust_remote_code. No network involved."""
    import transformers.dynamic_module_utils as dmu
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    monkeypatch.setattr(dmu, "HF_MODULES_CACHE", str(tmp_path / "hf_modules"))
    torch.manual_seed(0)
    conf = {k: v for k, v in TINY_EVAL_MODEL.items() if k != "model_type"}
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, **conf))
    src = tmp_path / "remote"
    model.save_pretrained(src)
    cfg = json.loads((src / "config.json").read_text())
    cfg["model_type"] = "tuneline_remote_llama"
    cfg["architectures"] = ["RemoteForCausalLM"]
    cfg["auto_map"] = {
        "AutoConfig": "configuration_remote.RemoteConfig",
        "AutoModelForCausalLM": "modeling_remote.RemoteForCausalLM",
    }
    (src / "config.json").write_text(json.dumps(cfg))
    (src / "configuration_remote.py").write_text(REMOTE_CONFIG)
    (src / "modeling_remote.py").write_text(REMOTE_MODEL)
    adapter = tmp_path / "adapter"
    get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(adapter)
    return src, adapter


def _remote_project(tmp_path, src, trust: bool):
    model = {"name_or_path": str(src), "trust_remote_code": trust, "dtype": "float32"}
    return tiny_project(tmp_path, model=model, template={"name": "auto"})


@pytest.mark.parametrize("recorded", [False, True])
def test_trust_remote_code_is_the_configs_decision_on_every_evaluation_load(
    tmp_path, remote_code_model, recorded
):
    from tuneline.errors import ConfigError

    src, adapter = remote_code_model
    # The training run recorded the opposite of what this config says: the config wins.
    base = {"name_or_path": str(src), "trust_remote_code": recorded, "dtype": "float32"}
    (adapter / "tuneline_train.json").write_text(json.dumps({"base_model": base}))
    trusted, refused = _remote_project(tmp_path, src, True), _remote_project(tmp_path, src, False)

    for load in (
        lambda cfg: load_trained_model(cfg, adapter, 64),  # adapter on its recorded base
        lambda cfg: load_trained_model(cfg, src, 64),  # a full model directory
        lambda cfg: load_start_model(cfg, 64),  # the base to compare against
    ):
        model = load(trusted)
        assert type(model.get_base_model() if hasattr(model, "get_base_model") else model).__name__ == (
            "RemoteForCausalLM"
        )
        with pytest.raises(ConfigError) as e:
            load(refused)
        assert "model.trust_remote_code" in str(e.value)
