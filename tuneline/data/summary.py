"""Dataset summary: the numbers a person checks before spending GPU hours.

`summarize` returns plain JSON-able data (logged as an artifact and compared across
runs); `render_summary_html` turns it into one self-contained HTML page with inline
SVG bars, because dashboards render artifacts offline and without scripts.
"""

from __future__ import annotations

import html
import math
from collections import Counter
from typing import Any

from tuneline.data.records import Record, RecordSet, joined_content

BINS = 20
# Token lengths are a sample beyond this many records per split: enough for percentiles.
MAX_TOKENIZED = 5000


def _texts(r: Record) -> str:
    """What training sees of a record, minus the chat template (which adds a constant)."""
    if r.kind == "text":
        return r.text or ""
    parts = [joined_content(m) for m in r.messages]
    if r.kind == "preference":  # a pair's chosen side, or a KTO record's one labelled answer
        parts += [m["content"] for m in r.chosen or r.rejected or []]
    return "\n".join(parts)


def _turns(r: Record) -> int:
    if r.kind == "text":
        return 0
    return sum(1 for m in r.messages if m["role"] != "system") + len(r.chosen or [])


def _percentile(sorted_vals: list[int], q: float) -> int:
    if not sorted_vals:
        return 0
    i = min(len(sorted_vals) - 1, max(0, math.ceil(q / 100 * len(sorted_vals)) - 1))
    return sorted_vals[i]


def _stats(values: list[int]) -> dict[str, Any]:
    """Percentiles plus a linear histogram from 0 to the max (fixed bins keep runs comparable)."""
    vals = sorted(values)
    if not vals:
        return {"n": 0}
    hi = vals[-1]
    width = max(1, math.ceil((hi + 1) / BINS))
    counts = [0] * BINS
    for v in vals:
        counts[min(BINS - 1, v // width)] += 1
    return {
        "n": len(vals),
        "min": vals[0],
        "mean": round(sum(vals) / len(vals), 1),
        "p50": _percentile(vals, 50),
        "p90": _percentile(vals, 90),
        "p99": _percentile(vals, 99),
        "max": hi,
        "hist": {"edges": [i * width for i in range(BINS + 1)], "counts": counts},
    }


def summarize(rs: RecordSet, tokenizer: Any = None) -> dict[str, Any]:
    """Counts per split and shape, turn counts, char (and token) length distributions."""
    out: dict[str, Any] = {"kind": rs.kind, "splits": {}}
    for name, recs in rs.splits.items():
        s: dict[str, Any] = {
            "records": len(recs),
            "shapes": dict(Counter(r.meta.get("shape", "?") for r in recs)),
            "sources": dict(Counter(str(r.meta.get("source", "?")) for r in recs)),
            "with_system": sum(1 for r in recs if r.messages and r.messages[0]["role"] == "system"),
            "turns": _stats([_turns(r) for r in recs]),
            "chars": _stats([len(_texts(r)) for r in recs]),
        }
        if rs.kind == "preference":
            s["chosen_chars"] = _stats([sum(len(m["content"]) for m in r.chosen or []) for r in recs])
            s["rejected_chars"] = _stats([sum(len(m["content"]) for m in r.rejected or []) for r in recs])
        if tokenizer is not None and recs:
            sample = recs if len(recs) <= MAX_TOKENIZED else recs[:: math.ceil(len(recs) / MAX_TOKENIZED)]
            ids = tokenizer([_texts(r) for r in sample], add_special_tokens=False)["input_ids"]
            s["tokens"] = _stats([len(x) for x in ids])
            s["tokens"]["sampled"] = len(sample) < len(recs)
        out["splits"][name] = s
    info = rs.info or {}
    for k in (
        "sources",
        "dropped",
        "dedup",
        "overlap",
        "max_samples",
        "weights",
        "fingerprints",
        "source_fingerprint",
    ):
        if k in info:
            out[k] = info[k]
    if "fingerprints" not in out:
        out["fingerprints"] = rs.fingerprints
    return out


# ---------------------------------------------------------------- HTML

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.3em}h2{font-size:1.1em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:.25em .6em;text-align:right}
th{background:#f5f5f5}td.l,th.l{text-align:left}.muted{color:#777;font-size:.9em}
.hist{display:inline-block;margin:.3em 1.2em .3em 0;vertical-align:top}
code{background:#f5f5f5;padding:0 .2em}
"""


def _e(v: Any) -> str:
    return html.escape(str(v))


def _svg_hist(title: str, st: dict[str, Any]) -> str:
    if not st or not st.get("n"):
        return ""
    counts = st["hist"]["counts"]
    edges = st["hist"]["edges"]
    w, h, pad = 300, 110, 16
    bw = (w - 2) / len(counts)
    top = max(counts) or 1
    bars = []
    for i, c in enumerate(counts):
        bh = (h - pad) * c / top
        bars.append(
            f'<rect x="{1 + i * bw:.1f}" y="{h - pad - bh:.1f}" width="{max(bw - 1, 1):.1f}" height="{bh:.1f}" '
            f'fill="#4a7bd0"><title>{edges[i]}-{edges[i + 1] - 1}: {c}</title></rect>'
        )
    return (
        f'<div class="hist"><div>{_e(title)} <span class="muted">p50 {st["p50"]}, p90 {st["p90"]}, '
        f'max {st["max"]}</span></div><svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
        f'role="img" aria-label="{_e(title)} histogram">{"".join(bars)}'
        f'<line x1="0" y1="{h - pad}" x2="{w}" y2="{h - pad}" stroke="#999"/>'
        f'<text x="0" y="{h - 3}" font-size="10">0</text>'
        f'<text x="{w}" y="{h - 3}" font-size="10" text-anchor="end">{edges[-1]}</text></svg></div>'
    )


def _table(rows: list[tuple[Any, ...]], head: tuple[str, ...]) -> str:
    th = "".join(f'<th class="{"l" if i == 0 else ""}">{_e(x)}</th>' for i, x in enumerate(head))
    body = "".join(
        "<tr>"
        + "".join(f'<td class="{"l" if i == 0 else ""}">{_e(x)}</td>' for i, x in enumerate(r))
        + "</tr>"
        for r in rows
    )
    return f"<table><tr>{th}</tr>{body}</table>"


def render_summary_html(summary: dict[str, Any]) -> str:
    """One self-contained page: no scripts, no external CSS/fonts, every value escaped."""
    splits = summary.get("splits", {})
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>Dataset summary</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>Dataset summary <span class='muted'>({_e(summary.get('kind', '?'))} records)</span></h1>",
    ]
    fps = summary.get("fingerprints", {})
    parts.append(
        _table(
            [
                (
                    n,
                    s["records"],
                    s.get("turns", {}).get("p50", ""),
                    s.get("chars", {}).get("p50", ""),
                    s.get("tokens", {}).get("p50", "") if "tokens" in s else "",
                    fps.get(n, ""),
                )
                for n, s in splits.items()
            ],
            ("split", "records", "turns p50", "chars p50", "tokens p50", "fingerprint"),
        )
    )
    for name, s in splits.items():
        parts.append(f"<h2>{_e(name)}</h2>")
        parts.append(_table(sorted(s.get("shapes", {}).items()), ("shape", "records")))
        parts.append(_table(sorted(s.get("sources", {}).items()), ("source", "records")))
        for label, k in (
            ("turns", "turns"),
            ("characters", "chars"),
            ("tokens", "tokens"),
            ("chosen characters", "chosen_chars"),
            ("rejected characters", "rejected_chars"),
        ):
            parts.append(_svg_hist(label, s.get(k, {})))
    dropped = summary.get("dropped") or {}
    if dropped.get("total"):
        parts.append("<h2>Dropped records</h2>")
        parts.append(_table(sorted(dropped.get("by_reason", {}).items()), ("reason", "records")))
        parts.append(
            "<ul>" + "".join(f"<li><code>{_e(p)}</code></li>" for p in dropped.get("problems", [])) + "</ul>"
        )
    dd, ov = summary.get("dedup") or {}, summary.get("overlap") or {}
    if dd or ov:
        parts.append("<h2>Dedup and leakage</h2>")
        rows = [("exact duplicates removed", dd.get("removed", 0))]
        rows += [
            (f"eval records also in train removed ({k.split('_')[0]})", v)
            for k, v in ov.items()
            if k.endswith("_removed")
        ]
        if "eval_prompts_in_train" in ov:
            rows.append(("eval prompts also in train (other answer)", ov["eval_prompts_in_train"]))
        parts.append(_table(rows, ("check", "count")))
    srcs = summary.get("sources") or []
    if srcs:
        parts.append("<h2>Sources</h2>")
        rows = []
        for s in srcs:
            ident = s.get("hub") or s.get("path") or f"{s.get('records', 0)} inline records"
            if s.get("revision"):
                ident = f"{ident}@{s['revision']}"
            files = s.get("files") or []
            rows.append(
                (
                    s.get("key", ""),
                    s.get("type", ""),
                    ident,
                    len(files),
                    sum(f.get("valid", 0) for f in files),
                )
            )
        parts.append(_table(rows, ("key", "type", "source", "files", "valid records")))
    if summary.get("source_fingerprint"):
        parts.append(
            f"<p class='muted'>source fingerprint <code>{_e(summary['source_fingerprint'])}</code></p>"
        )
    parts.append("</body></html>")
    return "".join(parts)
