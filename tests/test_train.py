"""Each method trains a tiny model for a few steps and changes exactly the weights it should."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from tests._train_script import (
    CHATML,
    FROZEN_LR,
    early_stop_expected,
    tiny_cfg,
    tiny_data,
    tiny_tokenizer,
)
from tuneline.errors import ConfigError, DataError, UserError
from tuneline.train import TrainResult, load_summary, train
from tuneline.train.guards import NonFiniteLossError
from tuneline.train.loading import load_model

IDENTITY = {"config_hash": "c1", "data_fingerprint": "d1", "base_model": "tiny"}


def _run(tmp_path, cfg, data=None, tok=None, **kw):
    logs: list[tuple[int, dict]] = []
    result = train(
        cfg,
        tok or tiny_tokenizer(),
        data if data is not None else tiny_data(),
        output_dir=str(tmp_path / "out"),
        checkpoint_dir=str(tmp_path / "ckpt"),
        run_identity=IDENTITY,
        log_metrics=lambda m, s: logs.append((s, dict(m))),
        **kw,
    )
    return result, logs


def _base_state(cfg, tok):
    return {k: v.clone() for k, v in load_model(cfg.model, vocab_size=len(tok)).state_dict().items()}


REQUIRED_FINAL = {
    "trainable_params",
    "trainable_fraction",
    "peak_memory_mb",
    "tokens_per_second",
    "padding_efficiency",
    "train_runtime",
}


def test_lora_trains_only_the_adapter(tmp_path):
    from peft import PeftModel

    tok = tiny_tokenizer()
    cfg = tiny_cfg(method="lora", max_steps=3, learning_rate=1e-2)
    result, logs = _run(tmp_path, cfg, tok=tok)
    assert isinstance(result, TrainResult) and result.global_step == 3 and result.method == "lora"

    out = tmp_path / "out"
    assert (out / "adapter_config.json").is_file()
    assert not list(out.glob("*.bin")) and not list(out.glob("*.pt")), "outputs are safetensors only"
    adapter = load_file(out / "adapter_model.safetensors")
    assert adapter and all("lora_A" in k or "lora_B" in k for k in adapter), sorted(adapter)[:5]
    # lora_B starts at zero: every one of them must have moved.
    assert all(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k)
    # all-linear: attention and MLP projections of both layers are adapted (embeddings / lm_head are not).
    targets = {k.split(".")[-3] for k in adapter}
    assert {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"} <= targets

    # The base weights inside the trained PEFT model are bit-identical to a fresh base.
    base = _base_state(cfg, tok)
    peft = PeftModel.from_pretrained(load_model(cfg.model, vocab_size=len(tok)), str(out))
    for name, p in peft.get_base_model().state_dict().items():
        clean = name.replace(".base_layer", "")
        if "lora_" in name:
            continue
        assert torch.equal(p, base[clean]), f"base weight {clean} changed"

    summary = load_summary(out)
    r = cfg.train.lora.r
    expected = sum(v.numel() for v in adapter.values())
    assert summary["metrics"]["trainable_params"] == expected
    assert 0 < summary["metrics"]["trainable_fraction"] < 0.5
    assert summary["lora"]["r"] == r
    final = logs[-1][1]
    assert REQUIRED_FINAL <= set(final), set(final)
    assert 0 < final["padding_efficiency"] <= 1 and final["tokens_per_second"] > 0
    # per-step train loss, learning rate and grad norm reach log_metrics
    assert [s for s, m in logs if "loss" in m][:3] == [1, 2, 3]
    assert all({"learning_rate", "grad_norm"} <= set(m) for s, m in logs if "loss" in m)
    assert any("eval_loss" in m for _, m in logs)


def test_lora_options_reach_peft(tmp_path):
    cfg = tiny_cfg(
        method="lora",
        max_steps=2,
        lora={
            "r": 4,
            "alpha": 8,
            "target_modules": ["q_proj", "v_proj"],
            "use_dora": True,
            "use_rslora": True,
        },
    )
    _run(tmp_path, cfg)
    conf = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert conf["r"] == 4 and conf["lora_alpha"] == 8 and conf["use_dora"] and conf["use_rslora"]
    assert set(conf["target_modules"]) == {"q_proj", "v_proj"}
    keys = load_file(tmp_path / "out" / "adapter_model.safetensors")
    assert any("lora_magnitude_vector" in k for k in keys), "DoRA magnitude vectors are saved"
    assert not any("k_proj" in k for k in keys)


@pytest.mark.parametrize("method", ["full", "cpt"])
def test_full_weight_methods_change_every_trained_tensor(tmp_path, method):
    from transformers import AutoModelForCausalLM

    tok = tiny_tokenizer()
    cfg = tiny_cfg(method=method, max_steps=2, learning_rate=1e-3)
    data = tiny_data(8, prefix=0 if method == "cpt" else 4)  # cpt: every token supervised
    result, logs = _run(tmp_path, cfg, data=data, tok=tok)
    out = tmp_path / "out"
    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()
    base = _base_state(cfg, tok)
    trained = AutoModelForCausalLM.from_pretrained(out).state_dict()
    for name, w in trained.items():
        assert not torch.equal(w, base[name]), f"{name} did not change under {method}"
    assert logs[-1][1]["trainable_fraction"] == 1.0
    assert result.metrics["trainable_params"] == sum(
        p.numel() for p in load_model(cfg.model, vocab_size=len(tok)).parameters()
    )


def test_packed_rows_train_as_rows_counting_only_real_tokens(tmp_path):
    """[B, L] packed rows are padded to the longest row of their (length-grouped) batch; the
    throughput figures count the real tokens exactly, never that padding."""
    data = tiny_data(16, packed=True)
    assert data.packed
    result, logs = _run(tmp_path, tiny_cfg(max_steps=2), data=data)  # 2 x 4 rows: the whole split
    m = result.metrics
    real = sum(len(r) for r in data.splits["train"].input_ids)
    assert m["tokens_per_second"] * m["train_runtime"] == pytest.approx(real)
    assert 0.8 < m["padding_efficiency"] <= 1.0
    assert all(math.isfinite(m["loss"]) for _, m in logs if "loss" in m)


def test_tokenizer_saved_with_the_training_chat_template(tmp_path):
    from transformers import AutoTokenizer

    data = tiny_data(8)
    data.chat_template = CHATML
    _run(tmp_path, tiny_cfg(max_steps=1), data=data)
    assert AutoTokenizer.from_pretrained(tmp_path / "out").chat_template == CHATML


def test_qlora_on_cpu_is_a_user_error_naming_the_key(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("has CUDA")
    with pytest.raises(ConfigError) as e:
        _run(tmp_path, tiny_cfg(method="qlora"))
    msg = str(e.value)
    assert "train.method" in msg and "--set train.method=lora" in msg
    assert not (tmp_path / "out").exists()


def test_fp16_on_cpu_is_refused(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("has CUDA")
    with pytest.raises(ConfigError, match=r"train\.precision"):
        _run(tmp_path, tiny_cfg(precision="fp16"))


def test_wrong_data_for_method(tmp_path):
    with pytest.raises(DataError, match="preference"):
        _run(tmp_path, tiny_cfg(method="dpo"))
    empty = tiny_data(4)
    empty.splits["train"].labels = [[-100] * len(r) for r in empty.splits["train"].labels]
    with pytest.raises(DataError, match="no supervised tokens"):
        _run(tmp_path, tiny_cfg(), data=empty)


def test_per_method_default_learning_rates():
    from tuneline.config.train import TrainConfig

    assert TrainConfig(method="lora").learning_rate == 2e-4
    assert TrainConfig(method="full").learning_rate == 2e-5
    assert TrainConfig(method="dpo", adapter="none").learning_rate == 5e-6
    assert TrainConfig(method="full", learning_rate=1e-3).learning_rate == 1e-3
    with pytest.raises(ValueError, match="early_stopping_patience"):
        TrainConfig(early_stopping_patience=2)


# ---------------------------------------------------------------------------- guards


def test_nonfinite_value_reaches_log_metrics_before_the_error(tmp_path):
    cfg = tiny_cfg(method="full", max_steps=6, learning_rate=1e30, max_grad_norm=1e30, warmup_ratio=0)
    seen: list[tuple[int, dict]] = []
    with pytest.raises(NonFiniteLossError) as e:
        train(
            cfg,
            tiny_tokenizer(),
            tiny_data(),
            output_dir=str(tmp_path / "out"),
            checkpoint_dir=str(tmp_path / "ckpt"),
            run_identity=IDENTITY,
            log_metrics=lambda m, s: seen.append((s, dict(m))),
        )
    step = e.value.step
    assert isinstance(e.value, UserError) and f"step {step}" in str(e.value) and step <= 3
    bad = [(s, m) for s, m in seen if any(not math.isfinite(v) for v in m.values())]
    assert bad and bad[-1][0] == step, seen
    assert e.value.what in bad[-1][1]
    # Stopped at that step: nothing logged past it, no artifact written.
    assert max(s for s, _ in seen) == step
    assert not (tmp_path / "out" / "tuneline_train.json").exists()


@pytest.mark.parametrize("accum", [1, 3])
def test_inf_weight_is_caught_at_step_one(tmp_path, accum):
    """An inf already in the base weights must fail the first step, not train on; with gradient
    accumulation too (the check runs once per optimizer step, over every micro-step's loss)."""
    cfg = tiny_cfg(method="lora", max_steps=3, gradient_accumulation_steps=accum)
    tok = tiny_tokenizer()
    base = load_model(cfg.model, vocab_size=len(tok))
    with torch.no_grad():
        base.model.layers[0].mlp.up_proj.weight[0, 0] = float("inf")
    base.save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    cfg = cfg.model_copy(
        update={
            "model": cfg.model.model_copy(
                update={"from_config": None, "name_or_path": str(tmp_path / "base")}
            )
        }
    )
    seen: list[tuple[int, dict]] = []
    with pytest.raises(NonFiniteLossError, match="step 1") as e:
        train(
            cfg,
            tok,
            tiny_data(),
            output_dir=str(tmp_path / "out"),
            checkpoint_dir=str(tmp_path / "ckpt"),
            run_identity=IDENTITY,
            log_metrics=lambda m, s: seen.append((s, dict(m))),
        )
    assert e.value.step == 1
    assert any(s == 1 and not math.isfinite(m.get("loss", 0.0)) for s, m in seen)


# ---------------------------------------------------------------------------- preference


def _preference_records(n=8):
    from tuneline.data.records import Record, RecordSet

    recs = [
        Record(
            kind="preference",
            messages=[{"role": "user", "content": f"what is {i} plus {i}?"}],
            chosen=[{"role": "assistant", "content": f"it is {2 * i}"}],
            rejected=[{"role": "assistant", "content": "the cat sat on the mat"}],
        )
        for i in range(n)
    ]
    return RecordSet(splits={"train": recs[:6], "validation": recs[6:]})


def _chat_tokenizer():
    tok = tiny_tokenizer()
    tok.chat_template = CHATML
    return tok


@pytest.mark.parametrize("method", ["dpo", "orpo"])
def test_preference_methods_train_a_lora_adapter(tmp_path, method):
    cfg = tiny_cfg(method=method, max_steps=2, batch_size=2, learning_rate=1e-2)
    result, logs = _run(tmp_path, cfg, data=_preference_records(), tok=_chat_tokenizer())
    assert result.global_step == 2
    adapter = load_file(tmp_path / "out" / "adapter_model.safetensors")
    assert all(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k)
    losses = [m["loss"] for _, m in logs if "loss" in m]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    assert REQUIRED_FINAL <= set(logs[-1][1])
    final = logs[-1][1]
    # Throughput is measured for every method (ORPO batches have no plain input_ids).
    assert final["tokens_per_second"] > 0 and 0 < final["padding_efficiency"] <= 1
    assert (tmp_path / "ckpt" / "checkpoint-2" / "manifest.json").is_file()
    if method == "dpo":
        assert any("rewards/chosen" in m or "eval_rewards/chosen" in m for _, m in logs), logs


@pytest.fixture(scope="module")
def sft_adapter(tmp_path_factory):
    """A one-step SFT LoRA adapter (r=4) on the chat tokenizer, trained once for the DPO tests that
    start from one; they only read it."""
    d = tmp_path_factory.mktemp("sft")
    _run(d, tiny_cfg(method="lora", max_steps=1, learning_rate=1e-2, lora={"r": 4}), tok=_chat_tokenizer())
    return d / "out"


def test_dpo_full_weights_from_an_sft_adapter(tmp_path, sft_adapter):
    """DPO can start from an SFT adapter directory (merged into the base for full-weight DPO)."""
    cfg = tiny_cfg(
        method="dpo",
        adapter="none",
        max_steps=1,
        batch_size=2,
        preference={"reference_model": str(sft_adapter)},
    )
    result, _ = _run(tmp_path, cfg, data=_preference_records(), tok=_chat_tokenizer())
    assert (tmp_path / "out" / "model.safetensors").is_file()
    assert load_summary(tmp_path / "out")["start_adapter"] == str(sft_adapter)
    assert result.metrics["trainable_fraction"] == 1.0


def test_dpo_continues_an_sft_adapter(tmp_path, sft_adapter):
    before = load_file(sft_adapter / "adapter_model.safetensors")
    cfg = tiny_cfg(
        method="dpo",
        max_steps=2,
        batch_size=2,
        learning_rate=1e-2,
        warmup_ratio=0,
        preference={"reference_model": str(sft_adapter)},
    )
    _run(tmp_path, cfg, data=_preference_records(), tok=_chat_tokenizer())
    after = load_file(tmp_path / "out" / "adapter_model.safetensors")
    assert set(after) == set(before), "one adapter (not TRL's frozen 'ref' copy) is the artifact"
    assert any(not torch.equal(after[k], before[k]) for k in after)
    assert json.loads((tmp_path / "out" / "adapter_config.json").read_text())["r"] == 4


# ---------------------------------------------------------------------------- early stopping


def test_early_stopping_wiring_stops_the_trainer_and_saves_the_best_weights(tmp_path):
    """Wiring only; the decision rule itself is tested on fixed loss sequences in test_callbacks.

    At FROZEN_LR every update is far below float32 resolution of the model's outputs, so the
    eval loss is bit-identical at every evaluation on any CPU: no evaluation improves on the
    first, and the run must stop after `patience` more. The adapter still moves (lora_B leaves
    zero), so the weights handed back are told apart from the last step's.
    """
    cfg = tiny_cfg(
        method="lora",
        max_steps=12,
        eval_steps=1,
        save_steps=1,
        save_total_limit=20,
        early_stopping_patience=2,
        learning_rate=FROZEN_LR,
        warmup_ratio=0,
        lora={"dropout": 0},
    )
    result, logs = _run(tmp_path, cfg)
    evals = [(s, m["eval_loss"]) for s, m in logs if "eval_loss" in m]
    during, final_eval = evals[:-1], evals[-1]  # the last one is the evaluation after training
    assert during == [(1, during[0][1]), (2, during[0][1]), (3, during[0][1])], during
    assert early_stop_expected(during, patience=2) == (3, 1)
    assert result.global_step == 3, "the callback's decision stopped the Trainer"
    assert result.metrics["best_step"] == 1 and result.metrics["best_eval_loss"] == during[0][1]
    assert load_summary(tmp_path / "out")["restored_best_eval_weights"] is True
    saved = load_file(tmp_path / "out" / "adapter_model.safetensors")
    ckpt = tmp_path / "ckpt"
    at_best = load_file(ckpt / "checkpoint-1" / "adapter_model.safetensors")
    last = load_file(ckpt / "checkpoint-3" / "adapter_model.safetensors")
    assert saved.keys() == at_best.keys()
    assert all(torch.equal(saved[k], at_best[k]) for k in saved), "the saved weights are the best step's"
    assert any(not torch.equal(saved[k], last[k]) for k in saved), "and not the last step's"
    assert final_eval == (3, during[0][1])
