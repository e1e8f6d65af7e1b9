"""A LoRA run stores its adapter (and the adapter's optimizer state), never the base weights."""

from __future__ import annotations

from tests._train_script import tiny_cfg, tiny_data, tiny_tokenizer

IDENTITY = {"config_hash": "c1", "data_fingerprint": "d1", "base_model": "tiny"}

FULL_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def test_lora_output_and_checkpoints_hold_the_adapter_only(tmp_path):
    from tuneline.train import train
    from tuneline.train.loading import load_model

    tok = tiny_tokenizer()
    cfg = tiny_cfg(method="lora", max_steps=2, save_steps=2, batch_size=4)
    train(
        cfg,
        tok,
        tiny_data(8, validation=0),
        output_dir=str(tmp_path / "out"),
        checkpoint_dir=str(tmp_path / "ckpt"),
        run_identity=IDENTITY,
    )
    base_bytes = sum(
        p.numel() * p.element_size() for p in load_model(cfg.model, vocab_size=len(tok)).parameters()
    )
    for d in (tmp_path / "out", tmp_path / "ckpt" / "checkpoint-2"):
        names = {p.name for p in d.iterdir()}
        assert "adapter_model.safetensors" in names and not names & set(FULL_WEIGHT_FILES), names
        weights = sum(p.stat().st_size for p in d.glob("*.safetensors"))
        assert weights < 0.25 * base_bytes, (d, weights, base_bytes)
