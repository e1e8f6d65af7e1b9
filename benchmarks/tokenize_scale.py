"""Format + tokenize alpaca records at scale, streaming: time per record and peak memory vs size.

The 2,000-record `alpaca_subset_2k` fixture is repeated into JSON Lines files of each size
(under --workdir, deleted afterwards). Each (size, num_proc) runs in a fresh subprocess:
`tuneline.tokenize.stream.stream_tokenize` with the phi-3-mini tokenizer, the built-in
alpaca template and max_length 512, writing an Arrow IPC file (deleted afterwards).

    .venv/bin/python benchmarks/tokenize_scale.py [--sizes 10000,100000,1000000] [--num-proc 1,2]
    .venv/bin/python benchmarks/tokenize_scale.py --quick --out /tmp/x.json   # smoke test

Peak memory is each process's VmHWM (/proc/<pid>/status: the kernel's own high-water
mark of its resident set), summed over the benchmark child and its pool workers. Forked
workers share the parent's pages copy-on-write, so the sum over-counts: it is an upper
bound of what the machine needed at once. Linear time shows as records/s constant across
sizes. Writes benchmarks/results/tokenize-scale-latest.json (or --out) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench_tokenize import base_rows  # the same alpaca rows (fixture, or synthetic without it)

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(os.environ.get("TUNELINE_FIXTURES", ROOT.parent / "shared" / "fixtures"))
RESULTS = ROOT / "benchmarks" / "results"
ALPACA = FIXTURES / "datasets" / "alpaca_subset_2k" / "alpaca_data.json"
TOKENIZER = FIXTURES / "tokenizers" / "phi-3-mini-instruct"
TINY_TOKENIZER = ROOT / "assets" / "tiny-tokenizer"
QUICK_SIZES = "300"
FULL_SIZES = "10000,100000,1000000"


def write_jsonl(path: Path, n: int, rows: list[dict[str, str]]) -> None:
    lines = [json.dumps(r, ensure_ascii=False) + "\n" for r in rows]
    with open(path, "w", encoding="utf-8") as f:
        full, rest = divmod(n, len(lines))
        for _ in range(full):
            f.writelines(lines)
        f.writelines(lines[:rest])


# ---------------------------------------------------------------- child


class _PeakSampler(threading.Thread):
    """Reads VmHWM of this process and of its children (the pool workers) until stopped.

    VmHWM never decreases, so a worker's last reading is its peak up to that moment;
    sampling every 0.2 s misses at most the growth in its last 0.2 s of life.
    """

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peaks: dict[int, int] = {}
        self.pss_peak_kb = 0  # largest sampled sum of Pss: shared pages counted once
        self.stop = threading.Event()

    @staticmethod
    def _field_kb(path: str, name: str) -> int | None:
        try:
            with open(path) as f:
                for line in f:
                    if line.startswith(name):
                        return int(line.split()[1])
        except OSError:
            return None
        return None

    def _children(self) -> set[int]:
        pids: set[int] = set()
        try:
            for tid in os.listdir("/proc/self/task"):
                with open(f"/proc/self/task/{tid}/children") as f:
                    pids |= {int(p) for p in f.read().split()}
        except OSError:
            pass
        return pids

    def sample(self) -> None:
        pss = 0
        for pid in {os.getpid(), *self._children()}:
            kb = self._field_kb(f"/proc/{pid}/status", "VmHWM:")
            if kb is not None:
                self.peaks[pid] = max(self.peaks.get(pid, 0), kb)
            pss += self._field_kb(f"/proc/{pid}/smaps_rollup", "Pss:") or 0
        self.pss_peak_kb = max(self.pss_peak_kb, pss)

    def run(self) -> None:
        while not self.stop.wait(0.2):
            self.sample()


def child(spec: dict[str, Any]) -> dict[str, Any]:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    from transformers import AutoTokenizer

    from tuneline.config.template import TemplateConfig, TokenizeConfig
    from tuneline.tokenize import prepare_tokenizer
    from tuneline.tokenize.stream import ArrowRows, stream_tokenize

    tok = AutoTokenizer.from_pretrained(spec["tokenizer"])
    prepare_tokenizer(tok, TemplateConfig(name="alpaca"), ".")
    cfg = TokenizeConfig(max_length=spec["max_length"], num_proc=spec["num_proc"], packing=False)
    out = Path(spec["out"])
    sampler = _PeakSampler()
    sampler.sample()
    sampler.start()
    t0 = time.perf_counter()
    c0 = time.process_time()
    res = stream_tokenize(spec["data"], out, tok, cfg, chunk_records=spec["chunk"])
    wall = time.perf_counter() - t0
    cpu_parent = time.process_time() - c0
    sampler.stop.set()
    sampler.join()
    sampler.sample()
    rows = ArrowRows(out)
    assert len(rows) == res.stats["n_out"] and rows[len(rows) - 1]["input_ids"]
    me = os.getpid()
    st = res.stats
    return {
        "records": res.records,
        "num_proc": spec["num_proc"],
        "wall_s": round(wall, 2),
        "cpu_s_parent": round(cpu_parent, 2),
        "records_per_s": round(res.records / wall),
        "tokens": st["tokens"],
        "tokens_read": st["tokens_read"],
        "tokens_per_s": round(st["tokens"] / wall),
        "rows": st["n_out"],
        "truncated": st["truncated"],
        "peak_rss_mb": round(sum(sampler.peaks.values()) / 1024, 1),
        "peak_rss_mb_main": round(sampler.peaks.get(me, 0) / 1024, 1),
        "peak_rss_mb_workers": [
            round(kb / 1024, 1) for pid, kb in sorted(sampler.peaks.items()) if pid != me
        ],
        "peak_pss_mb_sampled": round(sampler.pss_peak_kb / 1024, 1),
        "output_mb": round(out.stat().st_size / 2**20, 1),
    }


# ---------------------------------------------------------------- parent


def run_one(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        cmd = [sys.executable, __file__, "--child", json.dumps(spec), "--child-out", str(result)]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
        Path(spec["out"]).unlink(missing_ok=True)
        if proc.returncode != 0 or not result.exists():
            return {
                "records": spec["size"],
                "num_proc": spec["num_proc"],
                "error": f"exit {proc.returncode}: {(proc.stderr or proc.stdout)[-2000:]}",
            }
        res = json.loads(result.read_text())
        res["process_wall_s"] = round(time.perf_counter() - t0, 2)
        return res


HEADER = (
    "| records | num_proc | wall s | records/s | tokens/s | peak RSS MB, VmHWM sum (main + workers) "
    "| peak PSS MB | output MB |"
)


def row(r: dict[str, Any]) -> str:
    if "error" in r:
        return f"| {r['records']:,} | {r['num_proc']} | error: {r['error'].splitlines()[-1][:80]} |"
    workers = " + ".join(f"{w:.0f}" for w in r["peak_rss_mb_workers"])
    parts = f"{r['peak_rss_mb_main']:.0f}" + (f" + {workers}" if workers else "")
    return (
        f"| {r['records']:,} | {r['num_proc']} | {r['wall_s']:.1f} | {r['records_per_s']:,} | "
        f"{r['tokens_per_s']:,} | {r['peak_rss_mb']:.0f} ({parts}) | {r['peak_pss_mb_sampled']:.0f} | "
        f"{r['output_mb']:.0f} |"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", help="records per run, comma-separated (default 10000,100000,1000000)")
    ap.add_argument("--num-proc", default="1,2")
    ap.add_argument("--quick", action="store_true", help=f"a tiny size ({QUICK_SIZES}) for a smoke test")
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--chunk", type=int, default=2000, help="records per chunk")
    ap.add_argument("--workdir", help="where the JSONL and Arrow files go (default: a temp dir)")
    ap.add_argument("--out", default=str(RESULTS / "tokenize-scale-latest.json"))
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--child-out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))

    if args.child:
        Path(args.child_out).write_text(json.dumps(child(json.loads(args.child))))
        return

    sizes = [int(s) for s in (args.sizes or (QUICK_SIZES if args.quick else FULL_SIZES)).split(",")]
    procs = [int(p) for p in args.num_proc.split(",")]
    tokenizer = TOKENIZER if TOKENIZER.is_dir() else TINY_TOKENIZER
    rows = base_rows()
    meta = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "tokenizer": tokenizer.name,
        "data": ALPACA.name if ALPACA.is_file() else "synthetic",
        "template": "alpaca",
        "max_length": args.max_length,
        "chunk": args.chunk,
        "quick": args.quick,
        "peak_rss": "sum of VmHWM (/proc/<pid>/status) of the benchmark child and its pool workers "
        "(forked workers' shared pages counted in each: an upper bound)",
        "peak_pss": "largest sum of Pss (/proc/<pid>/smaps_rollup) over the same processes, sampled every 0.2 s",
        "load_avg_1m_start": round(os.getloadavg()[0], 2),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    print(HEADER)
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(dir=args.workdir) as work:
        for n in sizes:
            data = Path(work) / f"alpaca-{n}.jsonl"
            write_jsonl(data, n, rows)
            for p in procs:
                spec = {
                    "size": n,
                    "num_proc": p,
                    "data": str(data),
                    "out": str(Path(work) / f"tokenized-{n}-{p}.arrow"),
                    "tokenizer": str(tokenizer),
                    "max_length": args.max_length,
                    "chunk": args.chunk,
                }
                r = run_one(spec, args.timeout)
                r["load_avg_1m"] = round(os.getloadavg()[0], 2)
                results.append(r)
                print(row(r), flush=True)
                out.write_text(json.dumps({**meta, "results": results}, indent=1))  # survives an abort
            data.unlink()
    meta["load_avg_1m_end"] = round(os.getloadavg()[0], 2)
    out.write_text(json.dumps({**meta, "results": results}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
