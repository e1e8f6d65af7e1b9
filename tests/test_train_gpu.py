"""CUDA-only: qlora (4-bit NF4 via bitsandbytes), automatic bf16, multi-GPU DDP. Skipped without CUDA."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests._train_script import tiny_cfg, tiny_data, tiny_tokenizer
from tuneline.train import load_summary, train

pytestmark = pytest.mark.gpu
ROOT = Path(__file__).resolve().parent.parent


def test_qlora_trains_an_adapter_on_a_4bit_base(tmp_path):
    pytest.importorskip("bitsandbytes")
    cfg = tiny_cfg(method="qlora", max_steps=3, learning_rate=1e-2, warmup_ratio=0, merge_adapter=True)
    logs: list = []
    result = train(
        cfg,
        tiny_tokenizer(),
        tiny_data(),
        output_dir=str(tmp_path / "out"),
        checkpoint_dir=str(tmp_path / "ckpt"),
        run_identity={"config_hash": "q"},
        log_metrics=lambda m, s: logs.append((s, m)),
    )
    adapter = load_file(tmp_path / "out" / "adapter_model.safetensors")
    assert all(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k)
    summary = load_summary(tmp_path / "out")
    assert summary["precision"] in ("bf16", "fp16")
    assert result.metrics["peak_memory_mb"] > 0
    # the merged export is a plain (unquantized) model
    conf = json.loads((tmp_path / "out" / "merged" / "config.json").read_text())
    assert "quantization_config" not in conf


def test_auto_precision_is_bf16_on_capable_gpus(tmp_path):
    if not torch.cuda.is_bf16_supported():
        pytest.skip("GPU without bf16")
    train(
        tiny_cfg(method="lora", max_steps=2),
        tiny_tokenizer(),
        tiny_data(),
        output_dir=str(tmp_path / "out"),
        checkpoint_dir=str(tmp_path / "ckpt"),
        run_identity={},
    )
    assert load_summary(tmp_path / "out")["precision"] == "bf16"


def test_multi_gpu_ddp_trains(tmp_path):
    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
        str(ROOT / "tests" / "_train_script.py"), "--out", str(tmp_path / "out"), "--ckpt", str(tmp_path / "ckpt"),
        "--metrics", str(tmp_path / "m.jsonl"), "--steps", "6", "--save-steps", "3",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((tmp_path / "ckpt" / "checkpoint-6" / "manifest.json").read_text())
    assert {"rng_state_0.pth", "rng_state_1.pth"} <= set(manifest["files"])


def test_qlora_trains_the_rows_of_added_control_tokens(tmp_path):
    """Same code path as tests/test_train_new_tokens.py (LoRA): on a 4-bit base the new
    end-of-turn rows are trainable tokens too, saved in the adapter and restored on the
    unquantized base that export and evaluation load."""
    pytest.importorskip("bitsandbytes")
    from peft import PeftModel

    from tests.test_train_new_tokens import CHATML_TOKENS, QA, _pretrained_base, _records, _sft_cfg
    from tuneline.tokenize import prepare_tokenizer, tokenize_dataset
    from tuneline.train.loading import load_model, load_tokenizer

    cfg = _sft_cfg(_pretrained_base(tmp_path, tied=False), method="qlora")
    tok = prepare_tokenizer(load_tokenizer(cfg.model), cfg.template)
    new_ids = sorted(tok.convert_tokens_to_ids(t) for t in CHATML_TOKENS)
    data = tokenize_dataset(_records(), tok, cfg.tokenize)
    out = tmp_path / "out"
    train(cfg, tok, data, output_dir=str(out), checkpoint_dir=str(tmp_path / "ckpt"), run_identity={})
    adapter = load_file(out / "adapter_model.safetensors")
    token_keys = [k for k in adapter if "trainable_tokens" in k]
    assert len(token_keys) == 2 and all(adapter[k].shape[0] == len(new_ids) for k in token_keys), token_keys
    assert load_summary(out)["trained_token_rows"] == new_ids

    model = PeftModel.from_pretrained(load_model(cfg.model, vocab_size=len(tok)), str(out)).eval()
    end = tok.convert_tokens_to_ids("<|im_end|>")
    for q, a in QA:
        turn = [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        ids = tok(tok.apply_chat_template(turn, tokenize=False), add_special_tokens=False)["input_ids"]
        stop_at = max(i for i, t in enumerate(ids) if t == end)
        with torch.no_grad():
            logits = model(torch.tensor([ids[:stop_at]], device=model.device)).logits[0, -1]
        assert logits.argmax().item() == end, q
