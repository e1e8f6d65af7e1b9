"""A whole split or dataset -> what the trainer sees: rows, stats, audit, packing.

Conversations become one row each (rendered by `render`, encoded and truncated by
`encode`). Raw text for continued pretraining is not cut per document: documents
(each ending in EOS) are split into consecutive blocks of `max_length` tokens so that
every token read is trained on exactly once (see `_text_blocks`).
"""

from __future__ import annotations

import bisect
import gc
from collections import Counter
from typing import Any

from tuneline.config.template import TokenizeConfig
from tuneline.data.records import Record, RecordSet
from tuneline.errors import DataError, Problem
from tuneline.tokenize.encode import Encoder, labels_for, truncate
from tuneline.tokenize.render import Rendered, where, with_system
from tuneline.tokenize.tokenized import IGNORE_INDEX, TokenizedDataset, TokenizedSplit
from tuneline.tokenize.tokenizer import end_of_turn_token_ids

# Below this many records a pool is not worth its start-up and pickling. Measured on 2
# idle cores (benchmarks/README.md) num_proc=2 only ties serial at 5k-50k records: the
# serial Rust encode already runs on both cores, and only the ~30% Python part (jinja,
# labels) is single-threaded, so the pool pays where there are more cores than that.
PARALLEL_MIN_RECORDS = 20_000


def tokenize_split(
    records: list[Record], tokenizer: Any, cfg: TokenizeConfig, *, system_prompt: str | None = None
) -> TokenizedSplit:
    """Tokenize one split; every dropped/truncated sample is counted, none vanish silently.

    With `cfg.num_proc > 1` a big split of conversations is tokenized in a process pool;
    the result is identical to the serial one (same rows, order, record_index and stats).
    """
    n_proc = cfg.num_proc or 1
    if n_proc > 1 and len(records) >= max(PARALLEL_MIN_RECORDS, 2) and all(r.kind == "chat" for r in records):
        # Raw text is cut into blocks across documents and preference records are refused
        # at the first one: both depend on the whole split, so they stay serial.
        from tuneline.tokenize.parallel import tokenize_parallel

        return tokenize_parallel(records, tokenizer, cfg, system_prompt, n_proc)
    split, problems = tokenize_chunk(records, tokenizer, cfg, system_prompt)
    raise_overflow(problems, cfg)
    return split


def tokenize_chunk(
    records: list[Record], tokenizer: Any, cfg: TokenizeConfig, system_prompt: str | None
) -> tuple[TokenizedSplit, list[Problem]]:
    """One run of records -> rows + stats, and the overflow=error problems left for the caller
    to raise, so chunks tokenized apart can report every problem of the split at once."""
    # Millions of small lists make the cyclic GC rescan everything repeatedly (~35% of
    # the runtime at 50k records); nothing here creates reference cycles.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _tokenize_split(records, tokenizer, cfg, system_prompt)
    finally:
        if was_enabled:
            gc.enable()


def raise_overflow(problems: list[Problem], cfg: TokenizeConfig) -> None:
    if problems:
        raise DataError(
            problems, header=f"{len(problems)} sample(s) exceed tokenize.max_length {cfg.max_length}"
        )


def _tokenize_split(
    records: list[Record], tokenizer: Any, cfg: TokenizeConfig, system_prompt: str | None
) -> tuple[TokenizedSplit, list[Problem]]:
    enc = Encoder(tokenizer, cfg)
    renderer = enc.renderer
    stats: Counter = enc.stats
    chats: list[Rendered] = []
    texts: list[Rendered] = []
    for idx, rec in enumerate(records):
        if rec.kind == "text":
            text = rec.text or ""
            content = [(0, len(text))] if enc.escape and renderer.specials_in(text) else None
            texts.append(Rendered(text, [], content, "text", rec.meta, idx))
        elif rec.kind == "preference":
            raise DataError(
                [
                    Problem(
                        where(rec.meta),
                        "preference records are not tokenized for SFT; use tokenize_preference_split "
                        "(the same rendering, as the pre-tokenized rows DPO/ORPO train on)",
                    )
                ]
            )
        else:
            msgs = with_system(rec.messages, system_prompt)
            chats.append(renderer.chat_record(msgs, rec.meta, idx, escape=enc.escape, tools=rec.tools))

    L = cfg.max_length
    out_ids: list[list[int]] = []
    out_labels: list[list[int]] = []
    kept: list[int] = []
    problems: list[Problem] = []
    n_straddle = n_supervised = tokens_read = 0
    for r, e in zip(chats, enc.encode(chats), strict=True):
        ids, tspans = e.ids, e.spans
        n_straddle += e.straddles
        tokens_read += len(ids)
        sup = [(0, len(ids))] if cfg.train_on_inputs else [(a, b) for a, b, _ in tspans]
        if len(ids) > L:
            if cfg.overflow == "drop":
                stats["dropped_too_long"] += 1
                continue
            if cfg.overflow == "error":
                problems.append(
                    Problem(
                        where(r.meta),
                        f"{len(ids)} tokens > tokenize.max_length {L} "
                        "(set tokenize.overflow: truncate|drop or raise max_length)",
                    )
                )
                continue
            ids, sup = truncate(ids, tspans, sup, L, cfg.train_on_inputs)
            stats["truncated"] += 1
        labels, count = labels_for(ids, sup)
        if count == 0:
            stats["dropped_no_supervised"] += 1
            continue
        n_supervised += count
        out_ids.append(ids)
        out_labels.append(labels)
        kept.append(r.index)
    if problems:
        return TokenizedSplit(input_ids=[], labels=[], record_index=[]), problems

    if texts:
        docs = []
        for r, e in zip(texts, enc.encode(texts), strict=True):
            ids = e.ids + ([enc.eos_id] if enc.eos_id is not None else [])
            docs.append((ids, r.index))
            tokens_read += len(ids)
        for ids, labels, idx in _text_blocks(docs, L, per_document=cfg.packing):
            n_supervised += sum(1 for t in labels if t != IGNORE_INDEX)
            out_ids.append(ids)
            out_labels.append(labels)
            kept.append(idx)
        stats["documents"] += len(docs)

    tokens = sum(len(x) for x in out_ids)
    split_stats: dict[str, Any] = {
        "n_in": len(records),
        "n_out": len(out_ids),
        "dropped_too_long": stats["dropped_too_long"],
        "truncated": stats["truncated"],
        "dropped_no_supervised": stats["dropped_no_supervised"],
        "supervised_tokens": n_supervised,
        "tokens": tokens,
        # Read = every token the records render to; trained = those that carry a label.
        "tokens_read": tokens_read,
        "tokens_trained": n_supervised,
        "max_len": max((len(x) for x in out_ids), default=0),
        "mean_len": round(tokens / len(out_ids), 2) if out_ids else 0.0,
        "supervised_fraction": round(n_supervised / tokens, 4) if tokens else 0.0,
        "special_tokens_escaped": stats["special_tokens_escaped"],
        "prefix_fallbacks": stats["prefix_fallbacks"],
        "system_merged": stats["system_merged"],
        "double_bos_removed": stats["double_bos_removed"],
        "boundary_straddles": n_straddle,
    }
    if texts:
        split_stats["documents"] = stats["documents"]
    return TokenizedSplit(input_ids=out_ids, labels=out_labels, stats=split_stats, record_index=kept), []


def _text_blocks(
    docs: list[tuple[list[int], int]], L: int, *, per_document: bool
) -> list[tuple[list[int], list[int], int]]:
    """Raw-text documents -> (ids, labels, record index) blocks of at most L tokens, losing nothing.

    A causal LM never predicts a row's first token, so consecutive blocks overlap by one
    token: block k+1 starts with the last token of block k as context (label -100) and
    every token after a document's first is a label exactly once.

    per_document (packing): each document is cut on its own and the pieces are left for
    the packer, whose restarting position ids keep documents from attending to each
    other. Otherwise the documents are concatenated (EOS-separated, the usual pretraining
    stream) and cut into full blocks; only the last may be shorter.
    """
    if per_document:
        return [block for ids, idx in docs for block in _cut(ids, L, [0], [idx])]
    stream: list[int] = []
    offsets: list[int] = []
    owners: list[int] = []
    for ids, idx in docs:
        offsets.append(len(stream))
        owners.append(idx)
        stream += ids
    return _cut(stream, L, offsets, owners)


def _cut(
    ids: list[int], L: int, offsets: list[int], owners: list[int]
) -> list[tuple[list[int], list[int], int]]:
    """Blocks of `ids` overlapping by one token; each names the record its first token came from."""
    out = []
    start = 0
    while True:
        block = ids[start : start + L]
        owner = owners[bisect.bisect_right(offsets, start) - 1]
        out.append((block, [IGNORE_INDEX, *block[1:]], owner))
        if start + L >= len(ids):
            return out
        start += L - 1


def _padding_efficiency(lengths: list[int], batch_size: int) -> float:
    """Real / processed tokens with dynamic padding to the batch's longest, in data order."""
    real = sum(lengths)
    processed = 0
    for i in range(0, len(lengths), batch_size):
        chunk = lengths[i : i + batch_size]
        processed += max(chunk) * len(chunk)
    return round(real / processed, 4) if processed else 1.0


def tokenize_dataset(
    rs: RecordSet,
    tokenizer: Any,
    cfg: TokenizeConfig,
    *,
    system_prompt: str | None = None,
    audit_examples: int = 3,
    batch_size: int = 8,
) -> TokenizedDataset:
    """All splits, packed train/validation when cfg.packing, plus stats and an audit."""
    from tuneline.tokenize.packing import pack_split
    from tuneline.tokenize.preview import audit_rows

    splits: dict[str, TokenizedSplit] = {}
    stats: dict[str, Any] = {}
    audit: list[dict[str, Any]] = []
    for name, records in rs.splits.items():
        if records and records[0].kind == "preference":
            continue
        split = tokenize_split(records, tokenizer, cfg, system_prompt=system_prompt)
        lengths = [len(x) for x in split.input_ids]
        split.stats["padding_efficiency_max_length"] = (
            round(sum(lengths) / (len(lengths) * cfg.max_length), 4) if lengths else 1.0
        )
        if name == "train":
            audit = audit_rows(split, records, tokenizer, audit_examples, split_name=name)
        if cfg.packing and name in ("train", "validation"):
            split = pack_split(split, cfg.max_length)
        else:
            split.stats["padding_efficiency"] = _padding_efficiency(lengths, batch_size)
        splits[name] = split
        stats[name] = dict(split.stats)
    train = splits.get("train")
    if train is not None:
        for key in ("padding_efficiency", "supervised_tokens", "tokens", "tokens_read", "tokens_trained"):
            stats[key] = train.stats.get(key)
    stats["packing"] = cfg.packing
    stats["max_length"] = cfg.max_length
    stats["end_of_turn_token_ids"] = end_of_turn_token_ids(tokenizer)
    prep = getattr(tokenizer, "tuneline_prep", None)
    if prep:
        stats["tokenizer"] = prep
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None
    return TokenizedDataset(splits=splits, stats=stats, audit=audit, chat_template=template)
