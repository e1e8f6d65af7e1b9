"""Plots where people would rather look than read, as PNG bytes.

- `loss_curves`: train and eval loss over steps, from the Trainer's log history;
- `token_length_histogram`: tokens per row of each split, with the max_length cut;
- `metric_bars`: base vs fine-tuned (and a re-scored champion) per eval metric, one panel per
  metric because the scales differ (ROUGE in [0, 1], eval loss in nats), with the 95% bootstrap
  interval as whiskers.

matplotlib runs on its Agg backend (no display, no GUI toolkit) and is imported per call, so
importing this module costs nothing. Each function returns None when there is nothing to draw.
`png_html` embeds a PNG in an HTML page (ZenML visualisations, MLflow HTML artifacts).
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

_BASE, _TUNED, _CHAMPION = "#9aa5b1", "#2f6fb0", "#d08c2f"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    plt = _pyplot()
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    finally:
        plt.close(fig)
    return buf.getvalue()


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def loss_curves(log_history: Sequence[Mapping[str, Any]], title: str = "loss") -> bytes | None:
    """Train loss (every logging step) and eval loss (every eval) against the optimizer step."""
    train = [(h["step"], h["loss"]) for h in log_history if "step" in h and _finite(h.get("loss"))]
    evals = [(h["step"], h["eval_loss"]) for h in log_history if "step" in h and _finite(h.get("eval_loss"))]
    if not train and not evals:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    if train:
        ax.plot(*zip(*train, strict=True), color=_TUNED, label="train loss", linewidth=1.6)
    if evals:
        ax.plot(*zip(*evals, strict=True), color=_CHAMPION, marker="o", label="eval loss", linewidth=1.6)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss per supervised token")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return _png(fig)


def token_length_histogram(
    lengths: Mapping[str, Sequence[int]], max_length: int | None = None, packed: bool = False
) -> bytes | None:
    """Tokens per row for each split; the dashed line is tokenize.max_length."""
    lengths = {k: list(v) for k, v in lengths.items() if len(v)}
    if not lengths:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    longest = max(max(v) for v in lengths.values())
    bins = min(50, max(longest, 1))
    for (split, values), color in zip(lengths.items(), (_TUNED, _CHAMPION, _BASE, "#6a9f4a"), strict=False):
        ax.hist(
            values, bins=bins, range=(0, longest), alpha=0.6, color=color, label=f"{split} ({len(values)})"
        )
    if max_length and max_length <= 1.5 * longest:  # the cut, where it is close enough to matter
        ax.axvline(max_length, color="#b03030", linestyle="--", linewidth=1, label=f"max_length {max_length}")
    elif max_length:
        ax.plot([], [], " ", label=f"max_length {max_length} (off the chart)")
    ax.set_xlabel("tokens per packed row" if packed else "tokens per sample")
    ax.set_ylabel("rows" if packed else "samples")
    ax.set_title("token lengths")
    ax.grid(alpha=0.3)
    ax.legend()
    return _png(fig)


def _bar(value: Any, low: Any, high: Any) -> tuple[float, list[float]] | None:
    if not _finite(value):
        return None
    lo = value - low if _finite(low) else 0.0
    hi = high - value if _finite(high) else 0.0
    return float(value), [max(lo, 0.0), max(hi, 0.0)]


def metric_bars(report: Mapping[str, Any]) -> bytes | None:
    """Base vs fine-tuned (vs a champion re-scored on this eval set) per metric, with CI whiskers."""
    rows = report.get("metrics") or {}
    champion = report.get("champion") or {}
    champ_iv = champion.get("intervals") or {}
    panels = []
    for key, row in rows.items():
        bars = []
        for name, est, color in (
            ("base", row.get("base"), _BASE),
            ("fine-tuned", row.get("tuned"), _TUNED),
            (f"champion v{champion.get('version')}", champ_iv.get(key), _CHAMPION),
        ):
            est = est or {}
            bar = _bar(est.get("value"), est.get("ci_low"), est.get("ci_high"))
            if bar is not None:
                bars.append((name, *bar, color))
        if bars:
            panels.append((key, bars, bool(row.get("significant"))))
    if not panels:
        return None
    plt = _pyplot()
    cols = min(3, len(panels))
    nrows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols, 2.7 * nrows), squeeze=False)
    for ax, (key, bars, significant) in zip(axes.flat, panels, strict=False):
        names = [b[0] for b in bars]
        values = [b[1] for b in bars]
        errors = [[b[2][0] for b in bars], [b[2][1] for b in bars]]
        ax.bar(names, values, yerr=errors, capsize=4, color=[b[3] for b in bars])
        for i, v in enumerate(values):
            ax.annotate(
                f"{v:.3g}",
                (i, v),
                ha="center",
                va="bottom",
                fontsize=8,
                xytext=(0, 2),
                textcoords="offset points",
            )
        ax.set_title(key + (" *" if significant else ""), fontsize=10)
        ax.tick_params(axis="x", labelsize=8)
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    n = report.get("num_samples")
    fig.suptitle(
        f"held-out scores{f' on {n} samples' if n else ''}, 95% bootstrap intervals "
        "(* = fine-tuned better than base, paired)",
        fontsize=10,
    )
    fig.tight_layout()
    return _png(fig)


def png_html(png: bytes, alt: str) -> str:
    """An <img> with the PNG inline (data URI): the page stays one self-contained file."""
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}" style="max-width:100%">'


def figures_html(figures: Sequence[tuple[str, bytes | None]]) -> str:
    """A block of titled inline figures (skipping the ones that had nothing to draw)."""
    parts = [
        f"<figure><figcaption><b>{html.escape(title)}</b></figcaption>{png_html(png, title)}</figure>"
        for title, png in figures
        if png
    ]
    return f"<section class='tuneline-plots'>{''.join(parts)}</section>" if parts else ""


def embed_after_heading(page: str, block: str) -> str:
    """`block` right after the page's first </h1> (else at the top of the body): plots first."""
    if not block:
        return page
    for marker in ("</h1>", "<body>"):
        at = page.find(marker)
        if at >= 0:
            at += len(marker)
            return page[:at] + block + page[at:]
    return block + page
