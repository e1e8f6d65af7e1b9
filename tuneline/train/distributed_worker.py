"""One rank of a `tuneline.train.distributed.train_distributed` run: `python -m tuneline.train.distributed_worker WORKDIR`.

The launcher (`accelerate launch`, torchrun or plain python) starts this module on every
rank. It rebuilds the inputs the parent serialised into WORKDIR, calls the same
`tuneline.train.train()` the in-process step uses, and reports back through files only,
because the parent's callbacks (MLflow, checkpoint sync) cannot cross a process boundary:

- metrics.jsonl      {"step", "metrics"} per log_metrics call (rank 0), streamed by the parent
- checkpoints.jsonl  {"path"} per committed checkpoint (rank 0), forwarded to on_checkpoint
- result.json        the TrainResult fields (rank 0), written last
- error.json         {"type", "message", "user_error", ...} of the exception that stopped
                     rank 0 (error.rank<N>.json for the others), so a UserError comes back as
                     the same UserError instead of "exit status 1"
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tuneline.errors import UserError

# File names shared with tuneline.distributed (the parent side).
CONFIG = "config.json"
TOKENIZER = "tokenizer"
DATA = "data"
ARGS = "args.json"
METRICS = "metrics.jsonl"
CHECKPOINTS = "checkpoints.jsonl"
RESULT = "result.json"
ERROR = "error.json"


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def error_file(workdir: Path, rank: int) -> Path:
    return workdir / (ERROR if rank == 0 else f"error.rank{rank}.json")


# ---------------------------------------------------------------------------- data files


def save_data(data: Any, dest: Path) -> None:
    """TokenizedDataset -> Parquet (list<int32>: ~4 bytes a token instead of ~6 as JSON text);
    anything with `to_jsonable` (RecordSet) -> JSON."""
    from tuneline.tokenize.tokenized import TokenizedDataset, save_tokenized

    dest.mkdir(parents=True, exist_ok=True)
    if isinstance(data, TokenizedDataset):
        save_tokenized(data, str(dest))
        return
    if hasattr(data, "to_jsonable"):
        (dest / "meta.json").write_text(json.dumps({"kind": "records"}))
        (dest / "records.json").write_text(json.dumps(data.to_jsonable(), default=str, ensure_ascii=False))
        return
    raise TypeError(
        f"cannot hand {type(data).__name__} to a distributed worker: expected a TokenizedDataset or a RecordSet"
    )


def load_data(src: Path) -> Any:
    meta = json.loads((src / "meta.json").read_text())
    if meta["kind"] == "records":
        from tuneline.data.records import RecordSet

        return RecordSet.from_jsonable(json.loads((src / "records.json").read_text()))
    from tuneline.tokenize.tokenized import load_tokenized

    return load_tokenized(str(src))


# ---------------------------------------------------------------------------- reporting


def _append(path: Path, record: dict[str, Any]) -> None:
    """One complete line per write, flushed at once: the parent only consumes whole lines."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()


def _jsonable_attrs(e: BaseException) -> dict[str, Any]:
    """The exception's own attributes that survive JSON (step, what, differences, problems...),
    so the parent can rebuild the same exception type with the same fields."""
    out: dict[str, Any] = {}
    for k, v in vars(e).items():
        if k.startswith("_"):
            continue
        try:
            json.dumps(v)
        except (TypeError, ValueError):
            if isinstance(v, list) and all(hasattr(x, "__dataclass_fields__") for x in v):
                v = [asdict(x) for x in v]  # Problem lists
            elif isinstance(v, os.PathLike):
                v = os.fspath(v)
            else:
                continue
        out[k] = v
    return out


def write_error(workdir: Path, rank: int, e: BaseException) -> None:
    record = {
        "type": f"{type(e).__module__}.{type(e).__qualname__}",
        "message": str(e),
        "user_error": isinstance(e, UserError),
        "rank": rank,
        "attrs": _jsonable_attrs(e),
        "traceback": traceback.format_exc(),
    }
    tmp = error_file(workdir, rank).with_suffix(".tmp")
    tmp.write_text(json.dumps(record, default=str))
    os.replace(tmp, error_file(workdir, rank))


# ---------------------------------------------------------------------------- main


def run(workdir: Path) -> int:
    from transformers import AutoTokenizer

    from tuneline.config import ProjectConfig
    from tuneline.train.recipe import train

    rank = _rank()
    cfg = ProjectConfig.model_validate(json.loads((workdir / CONFIG).read_text()))
    args = json.loads((workdir / ARGS).read_text())
    tokenizer = AutoTokenizer.from_pretrained(
        workdir / TOKENIZER, trust_remote_code=cfg.model.trust_remote_code
    )
    if args.get("tokenizer_prep"):
        tokenizer.tuneline_prep = args["tokenizer_prep"]
    data = load_data(workdir / DATA)

    def log_metrics(metrics: dict[str, float], step: int) -> None:
        _append(workdir / METRICS, {"step": step, "metrics": metrics})

    def on_checkpoint(path: str) -> None:
        _append(workdir / CHECKPOINTS, {"path": path})

    # train() already reports from rank 0 only; the guard keeps that true for any future caller.
    main = rank == 0
    result = train(
        cfg,
        tokenizer,
        data,
        output_dir=args["output_dir"],
        checkpoint_dir=args["checkpoint_dir"],
        run_identity=args["run_identity"],
        log_metrics=log_metrics if main else None,
        on_checkpoint=on_checkpoint if main else None,
    )
    if main:
        tmp = workdir / (RESULT + ".tmp")
        tmp.write_text(json.dumps(asdict(result)))
        os.replace(tmp, workdir / RESULT)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m tuneline.train.distributed_worker WORKDIR", file=sys.stderr)
        return 2
    workdir = Path(argv[0])
    try:
        return run(workdir)
    except BaseException as e:  # reported to the parent, then re-raised for the log
        if not isinstance(e, SystemExit):
            try:
                write_error(workdir, _rank(), e)
            except OSError:
                pass  # the traceback on stderr still reaches the parent
        if isinstance(e, UserError):
            print(f"error: {e}", file=sys.stderr)
            return e.exit_code
        raise


if __name__ == "__main__":
    sys.exit(main())
