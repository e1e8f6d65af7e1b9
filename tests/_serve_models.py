"""Tiny trained chat models whose answers do not depend on float rounding, for the serve tests.

The base is a "bigram" Llama built from config: attention and MLP outputs are zeroed, so the
last hidden state is the last token's embedding, and the output head maps a few tokens to a
fixed next token with a logit margin of 80 (everything else maps to `FILLER`). Greedy decoding
after the chatml generation prompt (`...<|im_start|>assistant\\n`) then reads `ANSWER` and ends
with `<|im_end|>`, on every CPU, even after the few training steps the tests run on it (they
move logits by far less than the margin). Saved with its tokenizer, it is a local
"pretrained" base like a hub checkout.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from tests._train_script import TINY_MODEL, TINY_TOKENIZER, tiny_data

ANSWER = "The capital"
CHAIN = ("Ċ", "The", "Ġcapital", "<|im_end|>")  # each token's greedy successor is the next one
FILLER = "Ġof"
MARGIN = 10.0  # x sqrt(hidden_size) after the final RMSNorm: a logit of 80 against 0


def chatml_tokenizer() -> Any:
    from transformers import AutoTokenizer

    from tuneline.config import TemplateConfig
    from tuneline.tokenize import prepare_tokenizer

    return prepare_tokenizer(AutoTokenizer.from_pretrained(TINY_TOKENIZER), TemplateConfig(name="chatml"))


def bigram_base(dest: Path) -> Path:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    tok = chatml_tokenizer()
    kwargs = {k: v for k, v in TINY_MODEL.items() if k != "model_type"}
    conf = AutoConfig.for_model("llama", **kwargs, vocab_size=len(tok), tie_word_embeddings=False)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(conf)
    ids = tok.convert_tokens_to_ids(list(CHAIN))
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        emb, head = model.model.embed_tokens.weight, model.lm_head.weight
        emb.zero_()
        emb[:, 0] = 1.0
        head.zero_()
        head[tok.convert_tokens_to_ids(FILLER), 0] = MARGIN
        for slot, (src, dst) in enumerate(itertools.pairwise(ids), start=1):
            emb[src].zero_()
            emb[src, slot] = 1.0
            head[dst, slot] = MARGIN
    model.save_pretrained(dest)
    tok.save_pretrained(dest)
    return dest


def train_on(
    base: Path | str | None, out: Path, method: str, *, base_dir: Path | None = None, **train_overrides: Any
) -> tuple[Path, Any]:
    """A real training output directory (tuneline's recipe, 2 steps) and its config. `base`: a
    local base directory (relative to `base_dir` if given), or None for the tiny model built from
    config (random weights, like the demo's)."""
    from tuneline.config import ProjectConfig
    from tuneline.train import train

    model = (
        {"name_or_path": str(base)}
        if base is not None
        else {"from_config": TINY_MODEL, "tokenizer": str(TINY_TOKENIZER)}
    )
    model["dtype"] = "float32"  # also on a GPU, where `auto` would mean bfloat16
    cfg = ProjectConfig.model_validate(
        {
            "model": model,
            "data": {"path": "unused.jsonl"},
            "template": {"name": "chatml"},
            "train": {
                "method": method,
                "max_steps": 2,
                "batch_size": 4,
                "learning_rate": 1e-2 if method == "lora" else 1e-3,
                "warmup_ratio": 0,
                "save_steps": 1000,
                "logging_steps": 1,
                **train_overrides,
            },
            **({"base_dir": str(base_dir)} if base_dir is not None else {}),
        }
    )
    train(
        cfg,
        chatml_tokenizer(),
        tiny_data(8, validation=0),
        output_dir=str(out),
        checkpoint_dir=str(out.parent / f"{out.name}-ckpt"),
        run_identity={"config_hash": method},
    )
    return out, cfg


def random_base(dest: Path) -> Path:
    """The tiny model built from config (random weights), saved with its tokenizer as a local
    base: its answers are arbitrary token strings, so two code paths agreeing on them is telling."""
    from tuneline.config import ModelConfig
    from tuneline.train.loading import load_model

    tok = chatml_tokenizer()
    spec = ModelConfig(from_config=TINY_MODEL, tokenizer=str(TINY_TOKENIZER), dtype="float32")
    model = load_model(spec, vocab_size=len(tok))
    model.save_pretrained(dest)
    tok.save_pretrained(dest)
    return dest
