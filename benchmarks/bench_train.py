"""Training-core throughput on CPU: lora vs full, padded vs packed, and checkpoint cost.

Model: tiny Llama like /work/shared/notes/measurements.md (hidden 256, 4 layers, 4 heads /
2 KV heads) with the 801-token tiny tokenizer, rows with an alpaca-like length spread
(lognormal, median ~265 tokens, capped at 512) and the prompt third masked. Reports the
numbers train() itself logs (tokens/s of real tokens, padding efficiency, peak memory)
plus the time spent committing checkpoints (sha256 + fsync + rename).

Run: .venv/bin/python benchmarks/bench_train.py [--steps 10] [--batch 8] [--rows 480]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def rows(n: int, vocab: int, seed: int = 0) -> tuple[list[list[int]], list[list[int]]]:
    rng = random.Random(seed)
    ids, labels = [], []
    for _ in range(n):
        k = max(16, min(512, int(rng.lognormvariate(5.55, 0.45))))
        r = [rng.randrange(3, vocab) for _ in range(k)]
        ids.append(r)
        labels.append([-100] * (k // 3) + r[k // 3 :])
    return ids, labels


def pack(ids: list[list[int]], labels: list[list[int]], max_len: int = 512):
    """Greedy first-fit packing into rows of at most max_len tokens."""
    out_i, out_l, out_p = [], [], []
    cur_i: list[int] = []
    cur_l: list[int] = []
    cur_p: list[int] = []
    for r, lab in zip(ids, labels, strict=True):
        if cur_i and len(cur_i) + len(r) > max_len:
            out_i.append(cur_i)
            out_l.append(cur_l)
            out_p.append(cur_p)
            cur_i, cur_l, cur_p = [], [], []
        cur_i += r
        cur_l += lab
        cur_p += list(range(len(r)))
    if cur_i:
        out_i.append(cur_i)
        out_l.append(cur_l)
        out_p.append(cur_p)
    return out_i, out_l, out_p


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rows", type=int, default=480)
    ap.add_argument("--methods", default="lora,full")
    args = ap.parse_args()

    from tests._train_script import TINY_TOKENIZER, tiny_tokenizer
    from tuneline.config import ProjectConfig
    from tuneline.tokenize import TokenizedDataset, TokenizedSplit
    from tuneline.train import train

    tok = tiny_tokenizer()
    ids, labels = rows(args.rows, len(tok))
    datasets = {
        "padded": TokenizedDataset(splits={"train": TokenizedSplit(ids, labels)}),
        "packed": TokenizedDataset(splits={"train": TokenizedSplit(*pack(ids, labels))}),
    }
    model = {
        "model_type": "llama",
        "hidden_size": 256,
        "intermediate_size": 688,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 2048,
    }
    print("| method | data | steps | real tok/s | padding eff. | peak RSS MB | train s | ckpt commit s (n) |")
    print("|---|---|---|---|---|---|---|---|")
    for method in args.methods.split(","):
        for name, data in datasets.items():
            cfg = ProjectConfig.model_validate(
                {
                    "model": {"from_config": model, "tokenizer": str(TINY_TOKENIZER)},
                    "data": {"path": "unused.jsonl"},
                    "train": {
                        "method": method,
                        "max_steps": args.steps,
                        "batch_size": args.batch if name == "padded" else max(1, args.batch // 2),
                        "save_steps": max(1, args.steps // 2),
                        "logging_steps": args.steps,
                    },
                }
            )
            commits: list[float] = []
            with tempfile.TemporaryDirectory() as tmp:
                from tuneline.train import checkpoints

                orig = checkpoints.commit

                def timed(*a, _orig=orig, _log=commits, **k):
                    t = time.perf_counter()
                    try:
                        return _orig(*a, **k)
                    finally:
                        _log.append(time.perf_counter() - t)

                checkpoints.commit = timed
                try:
                    r = train(
                        cfg, tok, data, output_dir=f"{tmp}/out", checkpoint_dir=f"{tmp}/ck", run_identity={}
                    )
                finally:
                    checkpoints.commit = orig
            m = r.metrics
            print(
                f"| {method} | {name} | {r.global_step} | {m['tokens_per_second']:.0f} | "
                f"{m['padding_efficiency']:.3f} | {m['peak_memory_mb']:.0f} | {m['train_runtime']:.1f} | "
                f"{sum(commits):.2f} ({len(commits)}) |",
                flush=True,
            )


if __name__ == "__main__":
    main()
