"""Standalone training run on a tiny model, for tests that need a separate process.

The kill-and-resume tests SIGKILL it mid-run and run it again; the DDP test launches it
with torchrun; the collision test runs one while another trains against the same
artifact-store root (`--store`: the checkpoint directory comes from steps/_training.py as in
the pipeline). tests/_train_runs.py runs `main(argv)` in the test process or in a child forked
from it, without the seconds of a new interpreter's imports.
It also provides the tiny config/data builders the in-process tests share, so every test
trains the same model.

    python tests/_train_script.py --out O --ckpt C --steps 30 --save-steps 5 --metrics L.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import signal
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


# A learning rate whose updates (~1e-30) vanish against float32 outputs: eval loss is then
# bit-identical at every evaluation, on every CPU, while the adapter weights still change.
FROZEN_LR = 1e-30


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


def early_stop_expected(eval_losses: list[tuple[int, float]], patience: int) -> tuple[int | None, int]:
    """(step the run must stop at or None, best step) for these evaluations: stop after `patience`
    evaluations without a lower eval loss (transformers' EarlyStoppingCallback rule)."""
    best, best_step, bad = None, 0, 0
    for step, loss in eval_losses:
        if best is None or loss < best:
            best, best_step, bad = loss, step, 0
        else:
            bad += 1
            if bad >= patience:
                return step, best_step
    return None, best_step


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
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--resume", default="auto")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--eval-steps", type=int, default=None, help="evaluate on a 4-row validation split")
    ap.add_argument("--patience", type=int, default=None, help="train.early_stopping_patience")
    ap.add_argument("--kill-at", type=int, default=None, help="SIGKILL itself once checkpoint-N is committed")
    ap.add_argument(
        "--store", default=None, help="artifact-store root: --ckpt is ignored, steps/_training.py keys it"
    )
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
        learning_rate=args.lr,
        lora={"dropout": args.dropout},
        seed=args.seed,
        resume=args.resume,
        eval_steps=args.eval_steps,
        early_stopping_patience=args.patience,
    )
    data = tiny_data(args.n, validation=4 if args.eval_steps else 0)
    identity = {"config_hash": args.config_hash, "data_fingerprint": "d", "base_model": "tiny"}
    ckpt = args.ckpt
    if args.store:
        from steps._training import checkpoint_dirs, run_identity

        identity = run_identity(cfg, {"data": "d", "local_files": "none"})
        ckpt, _ = checkpoint_dirs(cfg, identity, store_path=args.store, store_is_local=True)
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

    def on_checkpoint(path: str) -> None:
        if args.kill_at is not None and path.endswith(f"checkpoint-{args.kill_at}"):
            os.kill(os.getpid(), signal.SIGKILL)  # a crash right after the commit, no cleanup

    result = train(
        cfg,
        tiny_tokenizer(),
        data,
        output_dir=args.out,
        checkpoint_dir=ckpt,
        run_identity=identity,
        log_metrics=log_metrics,
        on_checkpoint=on_checkpoint,
    )
    if int(os.environ.get("RANK", "0")) == 0:
        Path(args.out, "result.json").write_text(
            json.dumps(
                {
                    "resumed_from": result.resumed_from,
                    "global_step": result.global_step,
                    "checkpoint_dir": ckpt,
                    "metrics": result.metrics,
                }
            )
        )
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
