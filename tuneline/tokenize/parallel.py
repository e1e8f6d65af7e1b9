"""A split's conversations tokenized in a process pool, chunk by chunk, merged back into exactly
the serial result (`tokenize.num_proc`); the streaming path (`stream.py`) shares the pool.

Kept apart from `dataset.py`, which decides when a pool pays and owns the per-chunk work.
"""

from __future__ import annotations

from typing import Any

from tuneline.config.template import TokenizeConfig
from tuneline.data.records import Record
from tuneline.errors import ConfigError, Problem
from tuneline.tokenize.dataset import raise_overflow, tokenize_chunk
from tuneline.tokenize.tokenized import TokenizedSplit

# Chunks per worker: enough for the pool to even out slow chunks, few enough that
# per-chunk costs (Encoder set-up, pickling) stay negligible.
_CHUNKS_PER_WORKER = 4


def merge_split_stats(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Stats of consecutive chunks -> exactly the stats of tokenizing them as one split.

    Counts add up, max_len is the max, and the two ratios are recomputed from the summed
    counts (averaging rounded per-chunk ratios would drift).
    """
    out: dict[str, Any] = {}
    for st in parts:
        for k, v in st.items():
            if k == "max_len":
                out[k] = max(out.get(k, 0), v)
            elif k in ("mean_len", "supervised_fraction"):
                out.setdefault(k, 0.0)
            else:
                out[k] = out.get(k, 0) + v
    tokens, n_out, sup = out.get("tokens", 0), out.get("n_out", 0), out.get("supervised_tokens", 0)
    out["mean_len"] = round(tokens / n_out, 2) if n_out else 0.0
    out["supervised_fraction"] = round(sup / tokens, 4) if tokens else 0.0
    return out


# How pool workers start; see `tokenizer_pool` for why fork.
START_METHOD = "fork"
# Per worker process: (tokenizer, cfg, system prompt), set once by `_init_worker`.
_WORKER: dict[str, Any] = {}


def _init_worker(tokenizer: Any, cfg: TokenizeConfig, system_prompt: str | None) -> None:
    """Hand the worker its tokenizer once, not once per chunk (pickled bytes unless forked)."""
    import os
    import pickle

    # One single-threaded Rust encoder per worker: the pool is the parallelism, and
    # nested rayon threads would only fight over the same cores.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    if isinstance(tokenizer, bytes):
        tokenizer = pickle.loads(tokenizer)
    _WORKER.update(tokenizer=tokenizer, cfg=cfg, system_prompt=system_prompt)


def _chunk_in_worker(records: list[Record]) -> tuple[TokenizedSplit, list[Problem]]:
    return tokenize_chunk(records, _WORKER["tokenizer"], _WORKER["cfg"], _WORKER["system_prompt"])


def tokenizer_pool(tokenizer: Any, cfg: TokenizeConfig, system_prompt: str | None, n_proc: int) -> Any:
    """A process pool whose workers each hold the tokenizer (given once, in the initializer).

    Forked by default: measured on 2 busy cores, a 2-worker pool is ready in 0.5 s forked
    vs 9.5 s spawned and 11 s via forkserver (each fresh interpreter imports transformers
    to unpickle the tokenizer), which would push the break-even far up. The children run
    only Python and the Rust encoder, never torch, and set TOKENIZERS_PARALLELISM=false
    before their first encode (tokenizers reads it on every call), so the Rust thread
    pool a parent may have used is never touched in a child: no deadlock, and no
    fork warning (checked with tokenizers 0.23 after a parallel encode in the parent).
    Set START_METHOD = "spawn" for a parent where forking is not safe; the tokenizer is
    then pickled once and unpickled per worker.
    """
    import multiprocessing
    import pickle
    from concurrent.futures import ProcessPoolExecutor

    payload: Any = tokenizer
    if START_METHOD != "fork":
        try:
            payload = pickle.dumps(tokenizer)
        except Exception as e:  # a tokenizer object that cannot cross processes (custom class)
            raise ConfigError(
                [
                    Problem(
                        "tokenize.num_proc",
                        f"the tokenizer cannot be sent to worker processes ({e}); set num_proc: 1",
                    )
                ]
            ) from e
    return ProcessPoolExecutor(
        max_workers=n_proc,
        mp_context=multiprocessing.get_context(START_METHOD),
        initializer=_init_worker,
        initargs=(payload, cfg, system_prompt),
    )


def tokenize_parallel(
    records: list[Record], tokenizer: Any, cfg: TokenizeConfig, system_prompt: str | None, n_proc: int
) -> TokenizedSplit:
    n_chunks = min(len(records), n_proc * _CHUNKS_PER_WORKER)
    size = -(-len(records) // n_chunks)
    starts = list(range(0, len(records), size))
    with tokenizer_pool(tokenizer, cfg, system_prompt, n_proc) as pool:
        parts = list(pool.map(_chunk_in_worker, [records[a : a + size] for a in starts]))
    ids: list[list[int]] = []
    labels: list[list[int]] = []
    index: list[int] = []
    problems: list[Problem] = []
    for start, (part, chunk_problems) in zip(starts, parts, strict=True):
        problems += chunk_problems
        ids += part.input_ids
        labels += part.labels
        index += [start + i for i in part.record_index or []]
    raise_overflow(problems, cfg)
    stats = merge_split_stats([part.stats for part, _ in parts])
    return TokenizedSplit(input_ids=ids, labels=labels, stats=stats, record_index=index)
