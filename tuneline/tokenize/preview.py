"""Inspect before you train: tokenized examples with the supervised spans visible.

Most fine-tuning bugs (loss on the prompt, EOS never supervised, double BOS, a wrong
template) are visible in one rendered example. The preview shows ids exactly as the
trainer receives them; only a tokenizer is needed, no model weights.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from tuneline.tokenize.packing import unpack_row
from tuneline.tokenize.tokenized import IGNORE_INDEX, TokenizedDataset, TokenizedSplit

OPEN, CLOSE = "⟦", "⟧"
_GREEN, _RESET = "\x1b[1;32m", "\x1b[0m"


def _rows(src: Any, n: int, split: str = "train") -> list[dict[str, Any]]:
    """Rows as the trainer sees them from a TokenizedDataset, TokenizedSplit or list of dicts."""
    if isinstance(src, TokenizedDataset):
        name = split if split in src.splits else next(iter(src.splits), None)
        if name is None:
            return []
        src = src.splits[name]
    if isinstance(src, TokenizedSplit):
        out = []
        for i in range(min(n, len(src))):
            row = {"input_ids": src.input_ids[i], "labels": src.labels[i]}
            if src.position_ids is not None:
                row["position_ids"] = src.position_ids[i]
            out.append(row)
        return out
    return [dict(r) for r in list(src)[:n]]


def _runs(ids: list[int], labels: list[int]) -> list[tuple[bool, list[int]]]:
    runs: list[tuple[bool, list[int]]] = []
    for tid, lab in zip(ids, labels, strict=True):
        sup = lab != IGNORE_INDEX
        if runs and runs[-1][0] == sup:
            runs[-1][1].append(tid)
        else:
            runs.append((sup, [tid]))
    return runs


def highlight(ids: list[int], labels: list[int], tokenizer: Any, color: bool = False) -> str:
    """Decoded text with supervised runs wrapped in ⟦...⟧ (and green when color)."""
    parts = []
    for sup, run in _runs(ids, labels):
        text = tokenizer.decode(run, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        if sup:
            text = f"{_GREEN}{OPEN}{text}{CLOSE}{_RESET}" if color else f"{OPEN}{text}{CLOSE}"
        parts.append(text)
    return "".join(parts)


def supervised_texts(ids: list[int], labels: list[int], tokenizer: Any) -> list[str]:
    return [
        tokenizer.decode(run, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        for sup, run in _runs(ids, labels)
        if sup
    ]


def render_preview(
    td_or_examples: Any, tokenizer: Any, n: int = 3, *, color: bool | None = None, split: str = "train"
) -> str:
    """Human-readable preview; packed rows are shown sample by sample."""
    if color is None:
        color = sys.stdout.isatty()
    blocks = []
    for i, row in enumerate(_rows(td_or_examples, n, split)):
        ids, labels = list(row["input_ids"]), list(row["labels"])
        n_sup = sum(1 for t in labels if t != IGNORE_INDEX)
        head = f"── example {i}: {len(ids)} tokens, {n_sup} supervised ({n_sup / max(len(ids), 1):.0%})"
        if row.get("position_ids") is not None:
            samples = unpack_row(ids, labels, list(row["position_ids"]))
            head += f", packed row of {len(samples)} samples"
            body = "\n┄┄ next sample ┄┄\n".join(highlight(x, y, tokenizer, color) for x, y in samples)
        else:
            body = highlight(ids, labels, tokenizer, color)
        blocks.append(f"{head}\n{body}")
    legend = f"(supervised tokens are shown as {OPEN}...{CLOSE}; everything else is context only)"
    return "\n\n".join([legend, *blocks]) + "\n"


def preview_json_lines(td_or_examples: Any, tokenizer: Any, n: int = 3, *, split: str = "train") -> list[str]:
    """One JSON object per row: text, input_ids, labels (-100 = masked) exactly as trained."""
    lines = []
    for row in _rows(td_or_examples, n, split):
        obj: dict[str, Any] = {
            "text": tokenizer.decode(list(row["input_ids"]), skip_special_tokens=False),
            "input_ids": list(row["input_ids"]),
            "labels": list(row["labels"]),
        }
        if row.get("position_ids") is not None:
            obj["position_ids"] = list(row["position_ids"])
        lines.append(json.dumps(obj, ensure_ascii=False))
    return lines


def audit_rows(
    split: TokenizedSplit, records: list[Any], tokenizer: Any, n: int, *, split_name: str = "train"
) -> list[dict[str, Any]]:
    """A few fully rendered examples + mask stats, stored with the dataset for later review."""
    out = []
    for i in range(min(n, len(split))):
        ids, labels = split.input_ids[i], split.labels[i]
        rec_i = split.record_index[i] if split.record_index is not None else None
        meta = records[rec_i].meta if rec_i is not None and rec_i < len(records) else {}
        n_sup = sum(1 for t in labels if t != IGNORE_INDEX)
        out.append(
            {
                "split": split_name,
                "row": i,
                "meta": meta,
                "n_tokens": len(ids),
                "n_supervised": n_sup,
                "supervised_fraction": round(n_sup / len(ids), 4) if ids else 0.0,
                "rendered": highlight(ids, labels, tokenizer, color=False),
                "supervised_texts": supervised_texts(ids, labels, tokenizer),
            }
        )
    return out


def formatted_examples(records: list[Any], tokenizer: Any, n: int = 3) -> list[str]:
    """The first `n` records as text, rendered the way training renders them (chosen answer for pairs)."""
    from tuneline.tokenize.render import Renderer

    renderer = Renderer(tokenizer)
    out = []
    for rec in records[:n]:
        if rec.kind == "text":
            out.append(rec.text or "")
        else:
            # A KTO record has one labelled answer, which may be the rejected side.
            out.append(renderer.text(rec.messages + list(rec.chosen or rec.rejected or []), rec.meta))
    return out


def _decode(tokenizer: Any, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def preference_preview(rows: list[dict[str, list[int]]], tokenizer: Any, *, color: bool | None = None) -> str:
    """Pre-tokenized pairs as DPO/ORPO receive them; the trained completions in ⟦...⟧."""
    if color is None:
        color = sys.stdout.isatty()
    open_, close = (f"{_GREEN}{OPEN}", f"{CLOSE}{_RESET}") if color else (OPEN, CLOSE)
    blocks = []
    for i, r in enumerate(rows):
        p, c, j = r["prompt_ids"], r["chosen_ids"], r["rejected_ids"]
        blocks.append(
            f"── pair {i}: prompt {len(p)} tokens, chosen {len(c)}, rejected {len(j)}\n"
            f"{_decode(tokenizer, p)}\n"
            f"chosen:\n{open_}{_decode(tokenizer, c)}{close}\n"
            f"rejected:\n{open_}{_decode(tokenizer, j)}{close}"
        )
    legend = f"(the completions the preference loss scores are shown as {OPEN}...{CLOSE})"
    return "\n\n".join([legend, *blocks]) + "\n"


def preference_json_lines(rows: list[dict[str, list[int]]], tokenizer: Any) -> list[str]:
    """One JSON object per pair: the ids exactly as trained plus their decoded text."""
    lines = []
    for r in rows:
        obj: dict[str, Any] = {k: _decode(tokenizer, r[f"{k}_ids"]) for k in ("prompt", "chosen", "rejected")}
        obj.update({f"{k}_ids": list(r[f"{k}_ids"]) for k in ("prompt", "chosen", "rejected")})
        lines.append(json.dumps(obj, ensure_ascii=False))
    return lines
