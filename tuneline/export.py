"""Merge a LoRA adapter into its base model for serving stacks that only load plain models.

The merge always happens on an unquantized base (even for qlora adapters): merging into
4-bit weights would bake quantization error into a model that is then saved at full
precision, and bitsandbytes weights are not loadable by plain `from_pretrained` anyway.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tuneline.config import ModelConfig
from tuneline.errors import ConfigError, Problem
from tuneline.train.loading import is_adapter_dir, load_model, load_tokenizer


def _tokenizer_for(adapter_dir: Path, base_model_cfg: ModelConfig, base_dir: str) -> Any:
    """Prefer the tokenizer saved next to the adapter: it carries the training chat template.
    Either way custom tokenizer code runs only if model.trust_remote_code says so."""
    if (adapter_dir / "tokenizer_config.json").is_file():
        return load_tokenizer(base_model_cfg.model_copy(update={"tokenizer": str(adapter_dir)}), base_dir)
    return load_tokenizer(base_model_cfg, base_dir)


def merge_lora(
    adapter_dir: str,
    base_model_cfg: ModelConfig,
    out_dir: str,
    *,
    base_dir: str = ".",
    dtype: Any = None,
) -> str:
    """Write base + adapter as one safetensors model (and the tokenizer) to `out_dir`.

    `dtype` defaults to model.dtype (auto: bf16 on capable GPUs, fp32 on CPU).
    """
    from peft import PeftModel

    src = Path(adapter_dir)
    if not is_adapter_dir(src):
        raise ConfigError(
            [Problem("train.merge_adapter", f"{adapter_dir} has no adapter_config.json to merge")]
        )
    tok = _tokenizer_for(src, base_model_cfg, base_dir)
    base = load_model(base_model_cfg, base_dir, vocab_size=len(tok), **({"dtype": dtype} if dtype else {}))
    merged = PeftModel.from_pretrained(base, str(src)).merge_and_unload()
    merged.config.use_cache = True  # serving wants the KV cache that training switched off
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return str(out)
