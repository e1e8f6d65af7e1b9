"""Loading tokenizers and models from hub names, local directories or a config, in the
precision training asked for.

Hub names work for users with internet; tests and the offline demo use local
directories or `model.from_config`. `trust_remote_code` is only ever what the
config says, on every load path, and weights are read and written as safetensors only.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tuneline.config import ModelConfig
from tuneline.errors import ConfigError, Problem

# ---------------------------------------------------------------------------- precision


def resolve_precision(requested: str) -> str:
    """auto: bf16 where the GPU supports it, fp16 on older GPUs, fp32 on CPU."""
    import torch

    cuda = torch.cuda.is_available()
    if requested == "auto":
        if cuda:
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "fp32"
    if requested == "fp16" and not cuda:
        raise ConfigError(
            [
                Problem(
                    "train.precision", "fp16 mixed precision needs a CUDA GPU; use auto, fp32 or bf16 on CPU"
                )
            ]
        )
    return requested


def weights_dtype(model_dtype: str, precision: str, full_weights: bool) -> Any:
    """Weights follow the training precision unless model.dtype pins them. fp16 AMP needs fp32
    master weights for anything the optimizer updates (GradScaler refuses fp16 gradients)."""
    import torch

    if model_dtype == "auto":
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    else:
        dtype = torch_dtype(model_dtype)
    if full_weights and dtype == torch.float16:
        return torch.float32
    return dtype


def require_qlora() -> None:
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(
            [
                Problem(
                    "train.method",
                    "qlora quantizes the base model to 4-bit NF4 with bitsandbytes, which needs a CUDA GPU and "
                    "none is available here. Fix: `--set train.method=lora` to train the same adapter "
                    "unquantized on this machine, or run on a GPU machine with `pip install 'tuneline[gpu]'`",
                )
            ]
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as e:
        raise ConfigError(
            [Problem("train.method", "qlora needs bitsandbytes: `pip install 'tuneline[gpu]'`")]
        ) from e


# ---------------------------------------------------------------------------- loading


def _resolve(name: str, base_dir: str) -> str:
    """A relative path that exists under base_dir is local; anything else is a hub name."""
    p = Path(name).expanduser()
    if p.is_absolute():
        return str(p)
    local = Path(base_dir) / p
    if local.exists():
        return str(local)
    if name.startswith((".", "/")) or (os.sep in name and name.count("/") > 1):
        raise ConfigError([Problem("model", f"path '{name}' not found (relative to {base_dir})")])
    return name


def _remote_code_refused(e: ValueError, src: str) -> ConfigError | None:
    """transformers refuses a model/tokenizer that ships its own Python code unless told to run it."""
    if "trust_remote_code" not in str(e):
        return None
    return ConfigError(
        [
            Problem(
                "model.trust_remote_code",
                f"'{src}' ships its own code, which runs only with model.trust_remote_code=true; set it if you "
                "trust that code (read it first), or use a model transformers supports natively",
            )
        ]
    )


def load_tokenizer(cfg: ModelConfig, base_dir: str = ".") -> Any:
    from transformers import AutoTokenizer

    src = _resolve(cfg.tokenizer_path, base_dir)
    try:
        tok = AutoTokenizer.from_pretrained(
            src,
            revision=cfg.revision if cfg.tokenizer is None else None,
            trust_remote_code=cfg.trust_remote_code,
        )
    except ValueError as e:
        refused = _remote_code_refused(e, src)
        if refused is None:
            raise
        raise refused from e
    except OSError as e:
        raise ConfigError(
            [
                Problem(
                    "model.tokenizer" if cfg.tokenizer else "model.name_or_path",
                    f"cannot load tokenizer from '{src}': {str(e).splitlines()[0]} "
                    "(offline? use a local directory)",
                )
            ]
        ) from e
    return tok


def torch_dtype(name: str) -> Any:
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def load_model(cfg: ModelConfig, base_dir: str = ".", *, vocab_size: int | None = None, **kwargs: Any) -> Any:
    """Load pretrained weights, or build a seeded random model from `model.from_config`."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    dtype = kwargs.pop("dtype", None) or torch_dtype(cfg.dtype)
    if cfg.from_config is not None:
        conf_kwargs = dict(cfg.from_config)
        model_type = conf_kwargs.pop("model_type", "llama")
        if vocab_size is not None:
            conf_kwargs.setdefault("vocab_size", vocab_size)
        conf = AutoConfig.for_model(model_type, **conf_kwargs)
        conf._attn_implementation = cfg.attn_implementation
        # Seeded init: the same config always yields the same base model.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.init_seed)
            model = AutoModelForCausalLM.from_config(
                conf, dtype=dtype, trust_remote_code=cfg.trust_remote_code
            )
        return model
    src = _resolve(cfg.name_or_path or "", base_dir)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            src,
            revision=cfg.revision,
            trust_remote_code=cfg.trust_remote_code,
            dtype=dtype,
            attn_implementation=cfg.attn_implementation,
            use_safetensors=True,
            **kwargs,
        )
    except ValueError as e:
        refused = _remote_code_refused(e, src)
        if refused is None:
            raise
        raise refused from e
    except OSError as e:
        raise ConfigError(
            [Problem("model.name_or_path", f"cannot load model from '{src}': {str(e).splitlines()[0]}")]
        ) from e
    # A template that added control tokens grew the tokenizer; the embeddings must follow.
    if vocab_size is not None and vocab_size > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(vocab_size)
    return model


def is_adapter_dir(path: str | os.PathLike[str]) -> bool:
    """A PEFT adapter directory (adapter_config.json) rather than a full model."""
    return (Path(path) / "adapter_config.json").is_file()


def quantization_config_4bit(compute_dtype: Any) -> Any:
    """QLoRA recipe: NF4 weights, double quantization, matmuls in `compute_dtype`."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
    )


def load_model_4bit(
    cfg: ModelConfig, base_dir: str = ".", *, vocab_size: int | None = None, compute_dtype: Any
) -> Any:
    """Load the base model quantized to 4-bit NF4 on the current CUDA device.

    bitsandbytes quantizes while loading weights, so a `from_config` model is first
    materialized (seeded, exactly as load_model builds it) into a temporary directory.
    """
    import tempfile

    import torch

    device_map = {"": torch.cuda.current_device()}
    qconf = quantization_config_4bit(compute_dtype)
    if cfg.from_config is None:
        return load_model(
            cfg, base_dir, quantization_config=qconf, device_map=device_map, dtype=compute_dtype
        )
    from transformers import AutoModelForCausalLM

    with tempfile.TemporaryDirectory(prefix="tuneline-base-") as tmp:
        load_model(cfg, base_dir, vocab_size=vocab_size, dtype=compute_dtype).save_pretrained(tmp)
        return AutoModelForCausalLM.from_pretrained(
            tmp,
            quantization_config=qconf,
            device_map=device_map,
            dtype=compute_dtype,
            attn_implementation=cfg.attn_implementation,
            trust_remote_code=cfg.trust_remote_code,
            use_safetensors=True,
        )
