"""Labelled completions (KTO's unpaired feedback) and the fields a shape does not read.

A row's boolean `label` says whether its final answer is desirable (true) or undesirable
(false), as in TRL's unpaired preference format and LLaMA-Factory's `kto_tag`. The label
changes what the record means, so it is never dropped quietly:

- KTO (preference kind): a labelled conversation becomes an unpaired preference record,
  its final answer the `chosen` side (desirable) or the `rejected` side (undesirable).
- Every other method: an undesirable answer would be learned as if it were good, so such
  records are refused (file:line and the fix); desirable ones train as ordinary records.

`unused_fields` lists the columns a file carries that its shape never reads, so a
`--dry-run` shows what the data holds that training will not see.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from tuneline.data.records import Record
from tuneline.errors import DataError, Problem

LABEL = "label"
UNPAIRED_FIX = "train.method: kto"

# Top-level fields each shape reads (canonical names, after `columns:` remapping).
_COMMON = ("system", LABEL)
READ_FIELDS: dict[str, tuple[str, ...]] = {
    "alpaca": ("instruction", "input", "context", "output", "response", "history", *_COMMON),
    "chat": ("messages", "conversations", "tools", *_COMMON),
    "sharegpt": ("messages", "conversations", "tools", *_COMMON),
    "prompt_completion": ("prompt", "completion", "input", "output", *_COMMON),
    "text": ("text", LABEL),
    "preference": ("chosen", "rejected", "prompt", "messages", "conversations", "system"),
}


def read_label(ctx: Any, row: dict[str, Any], shape: str) -> bool | None:
    """The row's desirability label, or None when it has none.

    Only a boolean is a feedback label; any other value is reported as a problem, since a
    quoted "false" read as truthy would train an undesirable answer as a good one.
    """
    if shape == "preference" or LABEL not in row or row[LABEL] is None:
        return None
    value = row[LABEL]
    if isinstance(value, bool):
        return value
    name = ctx.name(LABEL)
    ctx.err(
        name,
        f"expected true (desirable) or false (undesirable), got {type(value).__name__} {value!r}; "
        f"write a JSON boolean, or map another column with columns: {{label: ...}}",
        "wrong type",
    )
    return None


def _completion_start(messages: list[dict[str, Any]]) -> int:
    """Index of the answer the label judges: the assistant turns after the last user turn."""
    i = len(messages)
    while i > 0 and messages[i - 1]["role"] != "user":
        i -= 1
    return i


def as_feedback(rec: Record) -> Record:
    """A labelled chat record as an unpaired preference record (one side only)."""
    cut = _completion_start(rec.messages)
    prompt, answer = rec.messages[:cut], rec.messages[cut:]
    good = bool(rec.meta["label"])
    meta = {k: v for k, v in rec.meta.items() if k != "label"}
    meta["label"] = good
    return Record(
        messages=prompt,
        kind="preference",
        chosen=answer if good else None,
        rejected=None if good else answer,
        meta=meta,
    )


def is_unpaired(rec: Record) -> bool:
    return rec.kind == "preference" and (not rec.chosen) != (not rec.rejected)


def _where(rec: Record) -> str:
    return f"{rec.meta.get('source', 'record')}:{rec.meta.get('line', '?')}"


def apply_labels(loaded: list[Any], kind: str | None) -> None:
    """Resolve labelled records for the record kind the method trains on (module docstring).

    `loaded` are the loader's per-source results (each with `.records`); changed in place.
    Raises DataError naming every refused record, whatever `data.on_error` says: skipping
    them would silently train on part of the data the user labelled.
    """
    labelled = any(r.meta.get("label") is not None for src in loaded for r in src.records)
    if not labelled:
        return
    if kind is None:
        kind = (
            "preference" if all(r.meta.get("label") is not None for s in loaded for r in s.records) else None
        )
    problems: list[Problem] = []
    for src in loaded:
        out = []
        for rec in src.records:
            label = rec.meta.get("label")
            if label is None:
                out.append(rec)
            elif kind == "preference" and rec.kind == "chat" and rec.tools is not None:
                problems.append(
                    Problem(
                        f"{_where(rec)} {LABEL}",
                        "a labelled tool-calling conversation: kto trains plain answers only (its tool "
                        "schemas would be dropped); remove the label or the tools",
                    )
                )
            elif kind == "preference" and rec.kind == "chat":
                out.append(as_feedback(rec))
            elif label is False and kind != "preference":
                problems.append(
                    Problem(
                        f"{_where(rec)} {LABEL}",
                        "false marks this answer undesirable, but this method would train the "
                        f"model to produce it; train on labelled answers with {UNPAIRED_FIX}, "
                        "or remove the record",
                    )
                )
            else:
                rec.meta = {k: v for k, v in rec.meta.items() if k != "label"}
                out.append(rec)
        src.records = out
    if problems:
        header = (
            f"{len(problems)} labelled record(s) cannot be trained"
            if kind == "preference"
            else f"{len(problems)} record(s) labelled undesirable (label: false) cannot be trained by "
            f"this method; use {UNPAIRED_FIX}"
        )
        raise DataError(problems, shown=20, header=header)


def require_paired(records: Any, method: str) -> None:
    """DPO and ORPO compare two answers to one prompt; a lone labelled answer has no partner."""
    problems = [
        Problem(
            _where(r),
            f"has one labelled answer (label: {str(bool(r.chosen)).lower()}) but train.method={method} needs "
            f"chosen and rejected answers to the same prompt; train unpaired feedback with {UNPAIRED_FIX}",
        )
        for r in sorted(
            (r for recs in records.splits.values() for r in recs if is_unpaired(r)),
            key=lambda r: (str(r.meta.get("source")), r.meta.get("line") or 0),
        )
    ]
    if problems:
        raise DataError(problems, shown=20, header=f"{len(problems)} unpaired record(s) for {method}")


def unused_fields(
    rows: list[tuple[Any, Any]], shape: str | None, columns: dict[str, str] | None = None
) -> dict[str, int]:
    """{field: rows carrying it} for the file's top-level fields its shape does not read
    (`columns:` names count as read when they map a field the shape reads)."""
    if shape is None:
        return {}
    canonical = set(READ_FIELDS.get(shape, ()))
    read = canonical | {col for c, col in (columns or {}).items() if c in canonical}
    counts: Counter[str] = Counter()
    for row, _loc in rows:
        if isinstance(row, dict):
            counts.update(k for k in row if k not in read and row[k] is not None)
    return dict(sorted(counts.items()))


def unused_lines(info: dict[str, Any]) -> list[str]:
    """Dry-run lines: per file, the fields present in the data that its shape does not read."""
    lines = []
    for src in info.get("sources") or []:
        for f in src.get("files") or []:
            unused = f.get("unused_fields") or {}
            if unused:
                fields = ", ".join(f"{k} ({n} rows)" for k, n in unused.items())
                lines.append(f"  unused:     {f['path']} (shape {f.get('shape')}): {fields} not read")
    return lines


def feedback_line(records: Any) -> list[str]:
    """Dry-run line for KTO data: how many answers are desirable / undesirable per split, since
    an imbalance is what train.preference.desirable_weight / undesirable_weight correct."""
    counts = {}
    for name, recs in records.splits.items():
        good = sum(1 for r in recs if r.chosen)
        bad = sum(1 for r in recs if r.rejected)
        if any(is_unpaired(r) for r in recs):
            counts[name] = f"{name} {good} desirable / {bad} undesirable"
    return [f"  feedback:   {', '.join(counts.values())}"] if counts else []
