"""Formatting + tokenization throughput: 50,000 alpaca-size records, phi-3-mini tokenizer.

Budget from the issue: under 20 s on 2 CPU cores. Records are the 2,000-record
Alpaca subset from ../shared/fixtures repeated (or synthetic if absent), so lengths
match real alpaca data. Run: .venv/bin/python benchmarks/bench_tokenize.py [--n 50000]
[--template alpaca|tokenizer|chatml] [--packing]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
FIXTURES = Path(os.environ.get("TUNELINE_FIXTURES", ROOT.parent / "shared" / "fixtures"))


def base_rows() -> list[dict[str, str]]:
    path = FIXTURES / "datasets" / "alpaca_subset_2k" / "alpaca_data.json"
    if path.exists():
        return json.loads(path.read_text())
    rng = random.Random(0)
    words = "the model learns to answer questions about data with care and precision".split()
    return [
        {
            "instruction": " ".join(rng.choices(words, k=rng.randint(5, 30))),
            "input": " ".join(rng.choices(words, k=rng.randint(0, 40))),
            "output": " ".join(rng.choices(words, k=rng.randint(20, 250))),
        }
        for _ in range(2000)
    ]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--template", default="alpaca")
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--packing", action="store_true")
    args = ap.parse_args()

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    from transformers import AutoTokenizer

    from tuneline.config.template import TemplateConfig, TokenizeConfig
    from tuneline.data.records import Record, RecordSet
    from tuneline.tokenize import prepare_tokenizer, tokenize_dataset

    tok_dir = FIXTURES / "tokenizers" / "phi-3-mini-instruct"
    tok = AutoTokenizer.from_pretrained(tok_dir)
    prepare_tokenizer(tok, TemplateConfig(name=args.template), ".")
    rows = base_rows()
    records = []
    for i in range(args.n):
        r = rows[i % len(rows)]
        user = {"role": "user", "content": r["instruction"]}
        if r.get("input"):
            user["input"] = r["input"]  # the alpaca template renders it as "### Input:"
        records.append(
            Record(messages=[user, {"role": "assistant", "content": r["output"]}], meta={"line": i + 1})
        )
    rs = RecordSet(splits={"train": records})
    t0 = time.perf_counter()
    c0 = time.process_time()  # all threads of this process (the Rust encoder's too)
    td = tokenize_dataset(rs, tok, TokenizeConfig(max_length=args.max_length, packing=args.packing))
    dt = time.perf_counter() - t0
    cpu = time.process_time() - c0
    st = td.stats["train"]
    print(
        json.dumps(
            {
                "records": args.n,
                "template": args.template,
                "seconds": round(dt, 2),
                "cpu_seconds": round(cpu, 2),
                "load_avg_1m": round(os.getloadavg()[0], 2),
                "records_per_s": round(args.n / dt),
                "tokens": st["tokens"],
                "supervised_tokens": st["supervised_tokens"],
                "mean_len": st["mean_len"],
                "padding_efficiency": st["padding_efficiency"],
                "padding_efficiency_max_length": st["padding_efficiency_max_length"],
                "cpus": os.cpu_count(),
            }
        )
    )


if __name__ == "__main__":
    main()
