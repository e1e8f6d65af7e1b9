"""Build the tiny byte-level BPE tokenizer the offline demo and tests use.

A real `tokenizers` BPE trained on the shipped demo data: byte-level, so any text
encodes with no unknown tokens; pad is its own token (never eos, so EOS stays in
the labels); ChatML control tokens exist but no chat template is set, like a
base model, so the template layer must pick one. Deterministic.

    python scripts/make_tiny_tokenizer.py  # writes assets/tiny-tokenizer/
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

ROOT = Path(__file__).resolve().parent.parent
SPECIALS = ["<|endoftext|>", "<|pad|>", "<|im_start|>", "<|im_end|>"]


def corpus() -> list[str]:
    texts = []
    for line in (ROOT / "data" / "lorekeep.jsonl").read_text(encoding="utf-8").splitlines():
        for m in json.loads(line)["messages"]:
            texts.append(m["content"])
    # Generic English so other small datasets in tests do not fall apart into bytes.
    texts += [
        "Below is an instruction that describes a task. Write a response that appropriately completes the request.",
        "### Instruction:\n### Input:\n### Response:\n",
        "system user assistant human gpt the a an of to and in is you that it for on with as are this be",
    ]
    return texts


def main() -> None:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1024,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|endoftext|>",
        pad_token="<|pad|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
        model_max_length=2048,
        clean_up_tokenization_spaces=False,
    )
    out = ROOT / "assets" / "tiny-tokenizer"
    out.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out)
    print(f"wrote tokenizer with {len(fast)} tokens to {out}")


if __name__ == "__main__":
    main()
