"""Training speed side by side: the seed recipe, TRL, TRL packing and tuneline's own train path.

Every variant runs in its own subprocess on the same model (built by tuneline's loader from one
config and seed), the same tokenized samples (prompt masked, response + EOS supervised), the
same optimizer settings and the same number of optimizer steps; each consumes exactly the
same samples once, so every variant trains on the same real tokens. What differs is only how
each one batches them:

- baseline: HF Trainer, every sample padded to max_length with pad = eos (the seed recipe);
- trl: TRL SFTTrainer with its defaults (dynamic padding, its loss and LM head);
- trl-packing: SFTTrainer(packing=True) (best-fit packing, padding-free flattened batches);
- tuneline: `tuneline.train.train()` exactly as the pipeline calls it, packing as the project's
  `tokenize.packing` default decides (`tuneline-packed` / `tuneline-padded`: packing forced on / off).

    .venv/bin/python benchmarks/run.py --scale cpu [--repeats 2] [--variants baseline,tuneline]
    .venv/bin/python benchmarks/run.py --scale gpu          # CUDA only: Llama-3.2-1B / Qwen2.5-0.5B shapes
    .venv/bin/python benchmarks/run.py --scale cpu --quick  # smoke test: tiny model, 2 steps

Repeats run interleaved (A B C D A B C D), so load on a shared machine hits every variant alike.
Writes benchmarks/results/<scale>-latest.json (one object per variant run) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(os.environ.get("TUNELINE_FIXTURES", ROOT.parent / "shared" / "fixtures"))
RESULTS = ROOT / "benchmarks" / "results"
VARIANTS = ("baseline", "trl", "trl-packing", "tuneline")
EXTRA_VARIANTS = ("tuneline-packed", "tuneline-padded")
TOKENIZER = FIXTURES / "tokenizers" / "phi-3-mini-instruct"
ALPACA = FIXTURES / "datasets" / "alpaca_subset_2k" / "alpaca_data.json"
GPU_CONFIGS = {
    "llama-3.2-1b": FIXTURES / "configs" / "mlc-llm-presets" / "Llama-3.2-1B-Instruct" / "config.json",
    # Qwen2-0.5B has exactly Qwen2.5-0.5B's shapes (896 hidden, 24 layers, 14/2 heads, 151,936 vocab).
    "qwen2.5-0.5b": FIXTURES / "configs" / "mlc-llm-presets" / "Qwen2-0.5B-Instruct" / "config.json",
}
CPU_MODEL = {
    "model_type": "llama",
    "hidden_size": 256,
    "intermediate_size": 688,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 2048,
}
QUICK_MODEL = {**CPU_MODEL, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2}
# Dense bf16 peak of the card, for MFU; unknown cards report no MFU.
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}
PROMPT = (
    "Below is an instruction that describes a task{ctx}. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{instruction}\n\n{input}### Response:\n"
)


# ---------------------------------------------------------------- plan (parent process)


def plan(scale: str, quick: bool) -> list[dict[str, Any]]:
    """One job per (variant, model, method); the settings every variant shares."""
    steps = 2 if quick else (20 if scale == "cpu" else 30)
    common = {
        "scale": scale,
        "quick": quick,
        "steps": steps,
        "batch": 8 if not quick else 4,
        "max_length": 512 if not quick else 256,
        "eval_samples": 32 if not quick else 8,
        "learning_rate": 5e-4,
    }
    if scale == "cpu":
        models = [("tiny-llama", QUICK_MODEL if quick else CPU_MODEL, "full")]
    else:
        models = [
            (name, str(path), method) for name, path in GPU_CONFIGS.items() for method in ("lora", "full")
        ]
    return [{**common, "model_name": n, "model": m, "method": meth} for n, m, meth in models]


def run_jobs(args: argparse.Namespace, path: Path, started: str) -> list[dict[str, Any]]:
    variants = args.variants.split(",")
    unknown = set(variants) - set(VARIANTS + EXTRA_VARIANTS)
    if unknown:
        raise SystemExit(f"unknown variant(s) {sorted(unknown)}; choose from {VARIANTS + EXTRA_VARIANTS}")
    results = []
    for rep in range(args.repeats):
        for job in plan(args.scale, args.quick):
            for variant in variants:
                spec = {**job, "variant": variant, "repeat": rep}
                if args.steps:
                    spec["steps"] = args.steps
                if args.tuneline_set:
                    spec["tuneline_set"] = args.tuneline_set
                res = _subprocess(spec, args.timeout)
                res["started"] = started
                results.append(res)
                print(_row(res), flush=True)
                path.write_text(json.dumps(results, indent=1))  # partial results survive an abort
    return results


def _subprocess(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, __file__, "--worker", json.dumps(spec), "--out", str(out)]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
        if proc.returncode != 0 or not out.exists():
            tail = (proc.stderr or proc.stdout)[-2000:]
            return {
                **_ids(spec),
                "error": f"exit {proc.returncode}: {tail}",
                "wall_s": time.perf_counter() - t0,
            }
        res = json.loads(out.read_text())
        res["wall_s"] = round(time.perf_counter() - t0, 2)
        return res


def _ids(spec: dict[str, Any]) -> dict[str, Any]:
    keys = ("variant", "model_name", "method", "repeat", "scale")
    return {k: spec[k] for k in keys}


HEADER = (
    "| variant | model | method | real tok/s | real tok/CPU-s | padding eff. | loss_last | eval_loss | peak MB "
    "| train s | wall s | mfu |"
)


def _row(r: dict[str, Any]) -> str:
    if "error" in r:
        return f"| {r['variant']} | {r['model_name']} | {r['method']} | ERROR {r['error'][-300:]!r} |"
    mfu = f"{r['mfu']:.3f}" if r.get("mfu") is not None else "-"
    return (
        f"| {r['variant']} | {r['model_name']} | {r['method']} | {r['real_tokens_per_s']:,.0f} | "
        f"{r['real_tokens_per_cpu_s']:,.0f} | "
        f"{r['padding_efficiency']:.3f} | {r['loss_last']:.4f} | {r['eval_loss']:.4f} | {r['peak_mem_mb']:,.0f} | "
        f"{r['train_s']:.1f} | {r['wall_s']:.1f} | {mfu} |"
    )


def summary(results: list[dict[str, Any]]) -> list[str]:
    """Ranges per variant and tuneline's speed-up over the baseline, measured pairwise per repeat."""
    lines = []
    ok = [r for r in results if "error" not in r]
    keys = sorted({(r["model_name"], r["method"]) for r in ok})
    for model, method in keys:
        runs = [r for r in ok if (r["model_name"], r["method"]) == (model, method)]
        for v in dict.fromkeys(r["variant"] for r in runs):
            tps = [r["real_tokens_per_s"] for r in runs if r["variant"] == v]
            cps = [r["real_tokens_per_cpu_s"] for r in runs if r["variant"] == v]
            lines.append(
                f"{model} {method} {v}: {min(tps):,.0f}-{max(tps):,.0f} real tok/s, "
                f"{min(cps):,.0f}-{max(cps):,.0f} real tok/CPU-s (n={len(tps)})"
            )
        for v in ("tuneline", *EXTRA_VARIANTS):
            ratios = []
            for rep in {r["repeat"] for r in runs}:
                base = [r for r in runs if r["variant"] == "baseline" and r["repeat"] == rep]
                ours = [r for r in runs if r["variant"] == v and r["repeat"] == rep]
                if base and ours:
                    ratios.append(
                        (
                            ours[0]["real_tokens_per_s"] / base[0]["real_tokens_per_s"],
                            ours[0]["real_tokens_per_cpu_s"] / base[0]["real_tokens_per_cpu_s"],
                        )
                    )
            if ratios:
                wall, cpu = [r[0] for r in ratios], [r[1] for r in ratios]
                lines.append(
                    f"{model} {method} {v} / baseline: {min(wall):.2f}x-{max(wall):.2f}x wall, "
                    f"{min(cpu):.2f}x-{max(cpu):.2f}x CPU time"
                )
    return lines


# ---------------------------------------------------------------- worker (one variant)


def samples(
    spec: dict[str, Any], tokenizer: Any
) -> tuple[list[tuple[list[int], int]], list[tuple[list[int], int]]]:
    """(train, eval) as (ids, prompt length): alpaca format, response + EOS, cut at max_length."""
    n_train = spec["steps"] * spec["batch"]
    records = json.loads(ALPACA.read_text())[: n_train + spec["eval_samples"]]
    out = []
    for r in records:
        ctx = ", paired with an input that provides further context" if r.get("input") else ""
        inp = f"### Input:\n{r['input']}\n\n" if r.get("input") else ""
        prompt = tokenizer(PROMPT.format(ctx=ctx, instruction=r["instruction"], input=inp)).input_ids
        answer = [*tokenizer(r["output"], add_special_tokens=False).input_ids, tokenizer.eos_token_id]
        ids = (prompt + answer)[: spec["max_length"]]
        out.append((ids, min(len(prompt), len(ids) - 1)))
    return out[:n_train], out[n_train:]


def project_config(spec: dict[str, Any], tokenizer_dir: str, batch: int, packing: bool | None = None) -> Any:
    from tuneline.config import ProjectConfig

    if spec["scale"] == "cpu":
        model: dict[str, Any] = {"from_config": spec["model"]}
    else:
        conf = json.loads(Path(spec["model"]).read_text())
        keep = (
            "model_type hidden_size intermediate_size num_hidden_layers num_attention_heads "
            "num_key_value_heads head_dim max_position_embeddings rms_norm_eps rope_theta rope_scaling "
            "tie_word_embeddings vocab_size hidden_act attention_bias"
        ).split()
        model = {"from_config": {k: conf[k] for k in keep if k in conf}, "dtype": "bfloat16"}
    tokenize: dict[str, Any] = {"max_length": spec["max_length"]}
    if packing is not None:
        tokenize["packing"] = packing
    return ProjectConfig.model_validate(
        {
            "model": {**model, "tokenizer": tokenizer_dir},
            "data": {"path": "unused.jsonl"},
            "tokenize": tokenize,
            "train": {
                "method": spec["method"],
                "max_steps": spec["steps"],
                "batch_size": batch,
                "learning_rate": spec["learning_rate"],
                "lr_scheduler": "cosine",
                "warmup_ratio": 0.0,
                "logging_steps": 1,
                "save_steps": spec["steps"] + 1000,
                "seed": 42,
            },
        }
    )


def hf_args(spec: dict[str, Any], cfg: Any, out_dir: str, batch: int, precision: str) -> dict[str, Any]:
    """The optimizer and schedule every HF/TRL variant shares with tuneline's run."""
    import torch

    t = cfg.train
    return {
        "output_dir": out_dir,
        "per_device_train_batch_size": batch,
        "max_steps": spec["steps"],
        "learning_rate": t.learning_rate,
        "lr_scheduler_type": t.lr_scheduler,
        "warmup_steps": 0,
        "weight_decay": t.weight_decay,
        "max_grad_norm": t.max_grad_norm,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "seed": t.seed,
        "data_seed": t.seed,
        "bf16": precision == "bf16",
        "use_cpu": not torch.cuda.is_available(),
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
    }


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    import torch
    from transformers import AutoTokenizer

    from tuneline.train.loading import resolve_precision
    from tuneline.train.models import build_model, count_parameters

    tok_dir = str(TOKENIZER)
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    train_s, eval_s = samples(spec, tokenizer)
    precision = resolve_precision("auto")
    variant = spec["variant"]
    cfg = project_config(spec, tok_dir, spec["batch"])
    real_tokens = sum(len(ids) for ids, _ in train_s)
    losses: list[float] = []
    cpu0 = time.process_time()
    with tempfile.TemporaryDirectory() as tmp:
        if variant.startswith("tuneline"):
            model, train_time, processed, steps = _run_tuneline(
                spec, tokenizer, tok_dir, train_s, tmp, losses
            )
        else:
            built = build_model(cfg, tokenizer, precision)
            trainer = _hf_trainer(variant, spec, cfg, built.model, tokenizer, train_s, tmp, precision)
            trainer.add_callback(_loss_recorder(losses))
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            trainer.train()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            train_time = time.perf_counter() - t0
            model, steps = trainer.model, trainer.state.global_step
            processed = trainer.tl_processed
        cpu_s = time.process_time() - cpu0
        eval_loss = _eval_loss(model, eval_s, tokenizer.eos_token_id)
        trainable, total = count_parameters(model)
        result = {
            **_ids(spec),
            "steps": steps,
            "samples": len(train_s),
            "real_tokens": real_tokens,
            "processed_tokens": processed,
            "real_tokens_per_s": real_tokens / train_time,
            "padding_efficiency": real_tokens / processed if processed else None,
            "loss_last": sum(losses[-3:]) / len(losses[-3:]) if losses else math.nan,
            "eval_loss": eval_loss,
            "train_s": train_time,
            # CPU seconds of the whole training phase (model build, trainer setup, train, save),
            # all threads: far less sensitive than wall time to other jobs on a shared machine.
            "cpu_s": cpu_s,
            "real_tokens_per_cpu_s": real_tokens / cpu_s,
            "peak_mem_mb": _peak_mb(),
            "trainable_params": trainable,
            "total_params": total,
            "mfu": _mfu(spec, model, train_s, train_time),
            "precision": precision,
            "device": _device(),
            "torch": torch.__version__,
        }
    return result


def _run_tuneline(
    spec: dict[str, Any], tokenizer: Any, tok_dir: str, train_s: list, tmp: str, losses: list[float]
) -> tuple[Any, float, float, int]:
    """tuneline.train.train() on a TokenizedDataset, packed iff the project's default says so."""
    from transformers import AutoModelForCausalLM

    from tuneline.config import TokenizeConfig
    from tuneline.tokenize import TokenizedDataset, TokenizedSplit
    from tuneline.tokenize.packing import pack_split
    from tuneline.train import train

    packing = {"tuneline-packed": True, "tuneline-padded": False}.get(
        spec["variant"], TokenizeConfig().packing
    )
    split = TokenizedSplit(
        input_ids=[ids for ids, _ in train_s],
        labels=[[-100] * n + ids[n:] for ids, n in train_s],
    )
    batch = spec["batch"]
    if packing:
        split = pack_split(split, spec["max_length"])
        batch = math.ceil(len(split) / spec["steps"])  # the same samples in the same number of steps
    cfg = project_config(spec, tok_dir, batch, packing=bool(packing))
    if spec.get("tuneline_set"):
        from tuneline.config import parse_override

        data = cfg.model_dump(mode="json")
        for item in spec["tuneline_set"]:
            keys, value = parse_override(item)
            node = data
            *parents, leaf = keys
            for part in parents:
                node = node[part]
            node[leaf] = value
        cfg = type(cfg).model_validate(data)

    def log(metrics: dict[str, float], step: int) -> None:
        if "loss" in metrics:
            losses.append(metrics["loss"])

    out = f"{tmp}/out"
    r = train(
        cfg,
        tokenizer,
        TokenizedDataset(splits={"train": split}),
        output_dir=out,
        checkpoint_dir=f"{tmp}/ckpt",
        run_identity={},
        log_metrics=log,
    )
    m = r.metrics
    runtime = m["train_runtime"]
    processed = m["tokens_per_second"] * runtime / m["padding_efficiency"]
    if cfg.train.uses_lora:
        from peft import AutoPeftModelForCausalLM

        model = AutoPeftModelForCausalLM.from_pretrained(out)
    else:
        model = AutoModelForCausalLM.from_pretrained(out)
    return model, runtime, processed, r.global_step


def _hf_trainer(
    variant: str,
    spec: dict[str, Any],
    cfg: Any,
    model: Any,
    tokenizer: Any,
    train_s: list,
    tmp: str,
    precision: str,
) -> Any:
    import torch
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    class Counted:
        """Counts the tokens each step processes (padding included), from the batch shapes."""

        tl_processed = 0

        def training_step(self, model, inputs, *a, **k):  # type: ignore[no-untyped-def]
            self.tl_processed += int(inputs["input_ids"].numel())
            return super().training_step(model, inputs, *a, **k)

    if variant == "baseline":
        L, eos = spec["max_length"], tokenizer.eos_token_id
        rows = []
        for ids, n in train_s:
            pad = L - len(ids)
            rows.append(
                {
                    "input_ids": ids + [eos] * pad,
                    "attention_mask": [1] * len(ids) + [0] * pad,
                    "labels": [-100] * n + ids[n:] + [-100] * pad,
                }
            )
        args = TrainingArguments(**hf_args(spec, cfg, tmp, spec["batch"], precision))

        class Baseline(Counted, Trainer):
            pass

        def collate(feats: list[dict[str, Any]]) -> dict[str, Any]:
            return {k: torch.tensor([f[k] for f in feats]) for k in feats[0]}

        return Baseline(model=model, args=args, train_dataset=rows, data_collator=collate)

    from trl import SFTConfig, SFTTrainer

    ds = Dataset.from_list(
        [{"input_ids": ids, "completion_mask": [0] * n + [1] * (len(ids) - n)} for ids, n in train_s]
    )
    packing = variant == "trl-packing"

    class TRL(Counted, SFTTrainer):
        pass

    def make(batch: int) -> Any:
        args = SFTConfig(
            **hf_args(spec, cfg, tmp, batch, precision), max_length=spec["max_length"], packing=packing
        )
        return TRL(model=model, args=args, train_dataset=ds, processing_class=tokenizer)

    trainer = make(spec["batch"])
    if packing:  # the same samples in the same number of steps: rows per step from TRL's own packing
        trainer = make(math.ceil(len(trainer.train_dataset) / spec["steps"]))
    return trainer


def _loss_recorder(losses: list[float]) -> Any:
    from transformers import TrainerCallback

    class Record(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):  # type: ignore[no-untyped-def]
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    return Record()


def _eval_loss(model: Any, eval_s: list, pad_id: int) -> float:
    """Mean loss per supervised token on held-out samples, one sample at a time (same code for all)."""
    import torch

    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    with torch.no_grad():
        for ids, n in eval_s:
            x = torch.tensor([ids], device=device)
            logits = model(input_ids=x).logits[0, :-1].float()
            target = torch.tensor(ids[1:], device=device)
            target[: n - 1] = -100
            loss = torch.nn.functional.cross_entropy(logits, target, ignore_index=-100, reduction="sum")
            total += float(loss)
            count += int((target != -100).sum())
    return total / count if count else math.nan


def _mfu(spec: dict[str, Any], model: Any, train_s: list, seconds: float) -> float | None:
    """Useful FLOPs / (time x the card's peak): matmul params N per real token (6N full: fwd 2N +
    bwd 4N; 4N LoRA: the frozen base gets no weight gradients), plus causal attention within each
    sample, 12 x layers x (heads x head_dim) x context per token (fwd 4, bwd 8). Padding counts as
    nothing: it is not useful work."""
    import torch

    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)
    if peak is None:
        return None
    conf = model.config
    emb = model.get_input_embeddings().weight.numel()
    base = sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n)
    n_matmul = base if getattr(conf, "tie_word_embeddings", False) else base - emb
    width = conf.num_attention_heads * getattr(conf, "head_dim", conf.hidden_size // conf.num_attention_heads)
    ctx = sum(len(ids) * (len(ids) + 1) / 2 for ids, _ in train_s)  # attended keys, summed over tokens
    tokens = sum(len(ids) for ids, _ in train_s)
    per_param = 4 if spec["method"] == "lora" else 6
    flops = per_param * n_matmul * tokens + 12 * conf.num_hidden_layers * width * ctx
    return flops / seconds / peak


def _peak_mb() -> float:
    import resource

    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _device() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"{platform.processor() or platform.machine()} x{os.cpu_count()} (torch threads {torch.get_num_threads()})"


# ---------------------------------------------------------------- entry


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scale", choices=("cpu", "gpu"), default="cpu")
    ap.add_argument("--quick", action="store_true", help="smoke test: tiny model, 2 steps")
    ap.add_argument(
        "--variants", default=",".join(VARIANTS), help=f"comma list of {VARIANTS + EXTRA_VARIANTS}"
    )
    ap.add_argument("--repeats", type=int, default=1, help="interleaved repeats of every variant")
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps (default: 20 cpu, 30 gpu)")
    ap.add_argument(
        "--tuneline-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override for the tuneline variants only (ablations), e.g. train.optimizer=adamw_torch",
    )
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per variant run")
    ap.add_argument("--results-dir", default=str(RESULTS), help="where <scale>-latest.json goes")
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.worker:
        Path(args.out).write_text(json.dumps(worker(json.loads(args.worker))))
        return 0
    if not TOKENIZER.is_dir() or not ALPACA.is_file():
        print(f"benchmark data not found under {FIXTURES} (set TUNELINE_FIXTURES)", file=sys.stderr)
        return 2
    if args.scale == "gpu":
        import torch

        if not torch.cuda.is_available():
            print("--scale gpu needs a CUDA device; none is visible here, nothing was run.")
            return 0
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    print(HEADER)
    print("|" + "---|" * HEADER.count(" | ") + "---|")
    results_dir = Path(args.results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    name = f"{args.scale}-quick-latest.json" if args.quick else f"{args.scale}-latest.json"
    path = results_dir / name
    results = run_jobs(args, path, started)
    for line in summary(results):
        print(line)
    print(f"wrote {path}")
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
