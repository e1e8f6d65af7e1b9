"""Standalone training run on a tiny model, for tests that need a separate process.

The kill-and-resume test SIGKILLs it mid-run and runs it again; the DDP test launches it
with `accelerate launch --cpu --num_processes 2`. It also provides the tiny config/data
builders the in-process tests share, so every test trains the same model.

    python tests/_train_script.py --out O --ckpt C --steps 30 --save-steps 5 --metrics L.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TINY_TOKENIZER = ROOT / "assets" / "tiny-tokenizer"
TINY_MODEL = {
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
}
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_cfg(**train: Any) -> Any:
    from tuneline.config import ProjectConfig

    train = {"max_steps": 4, "save_steps": 2, "batch_size": 4, "logging_steps": 1, **train}
    return ProjectConfig.model_validate(
        {
            "model": {"from_config": TINY_MODEL, "tokenizer": str(TINY_TOKENIZER)},
            "data": {"path": "unused.jsonl"},
            "train": train,
        }
    )


def tiny_data(n: int = 16, *, validation: int = 4, prefix: int = 4, packed: bool = False) -> Any:
    """Rows of varied length; the first `prefix` tokens are masked like a prompt would be."""
    from transformers import AutoTokenizer

    from tuneline.tokenize import TokenizedDataset, TokenizedSplit

    tok = AutoTokenizer.from_pretrained(TINY_TOKENIZER)
    words = "the cat sat on a mat while the dog ran after one red ball in the park".split()
    texts = [
        " ".join(words[(i * 3) % 7 : (i * 3) % 7 + 4 + i % 9]) + f" answer {i}" for i in range(n + validation)
    ]
    ids = [tok(t)["input_ids"] + [tok.eos_token_id] for t in texts]
    labels = [[-100] * prefix + r[prefix:] for r in ids]

    def split(a: int, b: int) -> TokenizedSplit:
        rows, labs = ids[a:b], labels[a:b]
        if not packed:
            return TokenizedSplit(rows, labs)
        # two samples per row, positions restarting at the boundary
        pr, pl, pp = [], [], []
        for i in range(0, len(rows) - 1, 2):
            pr.append(rows[i] + rows[i + 1])
            pl.append(labs[i] + labs[i + 1])
            pp.append(list(range(len(rows[i]))) + list(range(len(rows[i + 1]))))
        return TokenizedSplit(pr, pl, pp)

    splits = {"train": split(0, n)}
    if validation:
        splits["validation"] = split(n, n + validation)
    return TokenizedDataset(splits=splits)


def tiny_tokenizer() -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(TINY_TOKENIZER)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--metrics", required=True, help="JSONL of (step, metrics) from log_metrics (rank 0)")
    ap.add_argument("--method", default="lora")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--save-steps", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--grad-accum", type=int, default=1)
    ap.add_argument("--n", type=int, default=24)
    ap.add_argument("--sleep", type=float, default=0.0, help="seconds per step, so a kill lands mid-run")
    ap.add_argument("--config-hash", default="cfg-1")
    ap.add_argument("--dropout", type=float, default=0.05, help="LoRA dropout (0: no per-rank RNG in DDP)")
    args = ap.parse_args(argv)

    import torch
    from transformers import TrainerCallback

    torch.set_num_threads(1)  # bit-for-bit repeatable CPU kernels between the runs we compare
    from tuneline.train import train

    cfg = tiny_cfg(
        method=args.method,
        max_steps=args.steps,
        save_steps=args.save_steps,
        batch_size=args.batch_size,
        gradient_accumulation_steps=args.grad_accum,
        save_total_limit=2,
        learning_rate=1e-3,
        lora={"dropout": args.dropout},
    )
    data = tiny_data(args.n, validation=0)
    log_path = Path(args.metrics)

    def log_metrics(metrics: dict[str, float], step: int) -> None:
        with open(log_path, "a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")

    if args.sleep:
        # Slow the run down from the outside so the test can kill it between checkpoints.
        import transformers

        class Slow(TrainerCallback):
            def on_step_end(self, *a: Any, **k: Any) -> None:
                time.sleep(args.sleep)

        orig = transformers.Trainer.__init__

        def init(self: Any, *a: Any, **k: Any) -> None:
            k["callbacks"] = [*(k.get("callbacks") or []), Slow()]
            orig(self, *a, **k)

        transformers.Trainer.__init__ = init  # type: ignore[method-assign]

    result = train(
        cfg,
        tiny_tokenizer(),
        data,
        output_dir=args.out,
        checkpoint_dir=args.ckpt,
        run_identity={"config_hash": args.config_hash, "data_fingerprint": "d", "base_model": "tiny"},
        log_metrics=log_metrics,
    )
    if int(os.environ.get("RANK", "0")) == 0:
        Path(args.out, "result.json").write_text(
            json.dumps({"resumed_from": result.resumed_from, "global_step": result.global_step})
        )
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
