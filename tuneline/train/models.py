"""The model a run trains: the base in training precision, grown to the tokenizer, wrapped
for the method (LoRA/QLoRA adapter, full weights, a frozen DPO reference).

Rows a template added to the vocabulary (chatml's `<|im_end|>` on a base model that never
saw it) have no pretrained meaning: a resized embedding row is a random draw and so is its
output row. A full fine-tune trains them with everything else; a LoRA adapter only adapts
the linear layers, so without help the end-of-turn token would keep its random rows and a
generation might never stop. LoRA runs therefore also train exactly those rows, in the
input embedding and the output head, with PEFT's trainable tokens (a few rows each, saved
in the adapter), and nothing else of the embedding.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import Any

from tuneline.config import ModelConfig, ProjectConfig
from tuneline.errors import ConfigError, Problem
from tuneline.train.loading import (
    _resolve,
    is_adapter_dir,
    load_model,
    load_model_4bit,
    require_qlora,
    weights_dtype,
)

logger = logging.getLogger(__name__)


@dataclass
class BuiltModel:
    model: Any
    ref_model: Any = None  # explicit frozen reference (full-weight DPO)
    base_model_cfg: ModelConfig | None = None  # what the adapter applies to (merge/export)
    start_adapter: str | None = None  # DPO/ORPO continuing an SFT adapter
    peft_config: Any = None  # new adapter for TRL to attach
    new_token_ids: list[int] = field(default_factory=list)  # rows trained as trainable tokens


def start_model_config(cfg: ProjectConfig) -> tuple[ModelConfig, str | None]:
    """Preference runs may start from an SFT result instead of model.*: a full model (hub name or
    directory) replaces the base; an adapter directory is loaded on top of model.*."""
    start = cfg.train.preference.reference_model if cfg.train.is_preference else None
    if not start:
        return cfg.model, None
    if start.startswith("models:/"):
        raise ConfigError(
            [
                Problem(
                    "train.preference.reference_model",
                    f"'{start}' is a registry URI; resolve it to a local path before training",
                )
            ]
        )
    resolved = _resolve(start, cfg.base_dir)
    if is_adapter_dir(resolved):
        return cfg.model, resolved
    return (
        ModelConfig(
            name_or_path=resolved,
            tokenizer=cfg.model.tokenizer or cfg.model.name_or_path,
            trust_remote_code=cfg.model.trust_remote_code,
            dtype=cfg.model.dtype,
            attn_implementation=cfg.model.attn_implementation,
        ),
        None,
    )


def new_token_rows(tokenizer: Any, pretrained_rows: int, vocab: int) -> list[int]:
    """Embedding rows without pretrained meaning: rows the resize appended, plus the tokens
    `prepare_tokenizer` added (recorded in `tokenizer.tuneline_prep`), which can land in a
    checkpoint's spare, never-trained rows without any resize (Qwen pads its embedding)."""
    added = (getattr(tokenizer, "tuneline_prep", None) or {}).get("added_tokens") or []
    ids = {int(tokenizer.convert_tokens_to_ids(t)) for t in added}
    ids |= set(range(pretrained_rows, vocab))
    return sorted(i for i in ids if 0 <= i < vocab)


def _module_name(model: Any, module: Any) -> str | None:
    return next((n for n, m in model.named_modules() if m is module), None)


def trainable_token_layers(model: Any, token_ids: list[int], modules_to_save: list[str] | None) -> Any:
    """`LoraConfig.trainable_token_indices` for the new rows: input embedding and output head.

    With tied weights PEFT wraps the embedding once and ties the head to it; layers the user
    already trains whole (`train.lora.modules_to_save`) are left to that.
    """
    if not token_ids:
        return None
    full = set(modules_to_save or [])
    layers: dict[str, list[int]] = {}
    for module in (model.get_input_embeddings(), model.get_output_embeddings()):
        name = _module_name(model, module) if module is not None else None
        if name and not (full & {name, name.rsplit(".", 1)[-1]}):
            layers[name] = list(token_ids)
    return layers or None


def lora_config(cfg: ProjectConfig, trainable_tokens: Any = None) -> Any:
    from peft import LoraConfig

    lc = cfg.train.lora
    return LoraConfig(
        r=lc.r,
        lora_alpha=lc.alpha,
        lora_dropout=lc.dropout,
        target_modules=lc.target_modules,
        use_dora=lc.use_dora,
        use_rslora=lc.use_rslora,
        modules_to_save=lc.modules_to_save,
        trainable_token_indices=trainable_tokens,
        bias="none",
        task_type="CAUSAL_LM",
    )


def build_model(cfg: ProjectConfig, tokenizer: Any, precision: str) -> BuiltModel:
    import torch

    tcfg = cfg.train
    model_cfg, start_adapter = start_model_config(cfg)
    vocab = len(tokenizer)
    # A from_config model is built with the tokenizer's vocabulary; a checkpoint keeps its own
    # and is grown here, so the rows it was pretrained with are known.
    build_vocab = vocab if model_cfg.from_config is not None else None
    if tcfg.method == "qlora":
        require_qlora()
        compute = torch.bfloat16 if precision == "bf16" else torch.float16
        model = load_model_4bit(model_cfg, cfg.base_dir, vocab_size=build_vocab, compute_dtype=compute)
    else:
        dtype = weights_dtype(model_cfg.dtype, precision, full_weights=not tcfg.uses_lora)
        model = load_model(model_cfg, cfg.base_dir, vocab_size=build_vocab, dtype=dtype)
    pretrained_rows = model.get_input_embeddings().num_embeddings
    if vocab > pretrained_rows:
        model.resize_token_embeddings(vocab)
    if tcfg.method == "qlora":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=tcfg.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    model.config.use_cache = False  # the KV cache is useless in training and breaks checkpointing

    new_ids = new_token_rows(tokenizer, pretrained_rows, vocab) if model_cfg.from_config is None else []
    ref_model = None
    if tcfg.uses_lora:
        from peft import PeftModel, get_peft_model

        tokens = trainable_token_layers(model, new_ids, tcfg.lora.modules_to_save)
        if tokens:
            logger.info(
                "training %d new token row(s) %s of %s alongside the adapter (trainable tokens)",
                len(new_ids),
                new_ids,
                sorted(tokens),
            )
        if start_adapter:
            # Keep training the SFT adapter (its own token rows included); TRL freezes a copy of
            # it as the DPO reference.
            model = PeftModel.from_pretrained(model, start_adapter, is_trainable=True)
        elif tcfg.is_preference:
            # Handed to TRL as peft_config: it wraps the model and uses "adapters disabled" (the
            # untouched start model) as the reference, with no second copy in memory.
            return BuiltModel(model, None, model_cfg, None, lora_config(cfg, tokens), new_ids)
        else:
            model = get_peft_model(model, lora_config(cfg, tokens))
    elif tcfg.is_preference and tcfg.method in ("dpo", "kto"):
        if start_adapter:
            model = _merged(model, start_adapter)
        ref_model = copy.deepcopy(model).eval()
        for p in ref_model.parameters():
            p.requires_grad_(False)
    elif start_adapter:
        model = _merged(model, start_adapter)
    return BuiltModel(model, ref_model, model_cfg, start_adapter, new_token_ids=new_ids)


def _merged(model: Any, adapter_dir: str) -> Any:
    """Full-weight training from an SFT adapter: fold it in, then make every weight trainable
    again (PEFT froze them when loading)."""
    from peft import PeftModel

    model = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def count_parameters(model: Any) -> tuple[int, int]:
    """(trainable, total); PEFT's count undoes 4-bit packing so qlora numbers are real sizes."""
    if hasattr(model, "get_nb_trainable_parameters"):
        return model.get_nb_trainable_parameters()
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total
