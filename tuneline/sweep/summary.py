"""What a study found, as plain data (the parent run's `sweep/summary.json`), text, and a plot.

Works on Optuna's FrozenTrial objects by duck typing (number, state, value, params,
user_attrs, intermediate_values), so tests can build them from a real in-memory study.
"""

from __future__ import annotations

import math
from typing import Any

from tuneline.sweep.pruning import PRUNED_ATTR


def _state(trial: Any) -> str:
    return str(getattr(trial.state, "name", trial.state)).lower()


def study_summary(study_name: str, metric: str, direction: str, trials: list[Any]) -> dict[str, Any]:
    rows = []
    for t in trials:
        if _state(t) in ("waiting",):
            continue
        rows.append(
            {
                "number": t.number,
                "state": _state(t),
                "value": t.value if _state(t) == "complete" else None,
                "params": dict(t.params),
                "pruned_at_step": (t.user_attrs.get(PRUNED_ATTR) or {}).get("step"),
                "interrupted": bool(t.user_attrs.get("tuneline.interrupted")),
                "pipeline_run": t.user_attrs.get("tuneline.pipeline_run"),
                "cached_steps": list(t.user_attrs.get("tuneline.cached_steps") or []),
                "intermediate": {int(k): v for k, v in sorted(t.intermediate_values.items())},
            }
        )
    complete = [
        r for r in rows if r["state"] == "complete" and r["value"] is not None and math.isfinite(r["value"])
    ]
    best = None
    if complete:
        pick = max if direction == "maximize" else min
        best = pick(complete, key=lambda r: r["value"])
    counts: dict[str, int] = {}
    for r in rows:
        key = "interrupted" if r["interrupted"] else r["state"]
        counts[key] = counts.get(key, 0) + 1
    return {
        "study": study_name,
        "metric": metric,
        "direction": direction,
        "counts": counts,
        "best": best,
        "trials": rows,
    }


def format_study(summary: dict[str, Any]) -> list[str]:
    """One line per trial, then the best one."""
    c = summary["counts"]
    lines = [
        f"\nSweep {summary['study']}: {summary['direction']} {summary['metric']}  "
        f"({c.get('complete', 0)} complete, {c.get('pruned', 0)} pruned, {c.get('fail', 0)} failed"
        + (f", {c['interrupted']} interrupted and rerun" if c.get("interrupted") else "")
        + ")"
    ]
    for r in summary["trials"]:
        if r["interrupted"]:
            continue
        shown = " ".join(f"{k}={_fmt(v)}" for k, v in r["params"].items())
        if r["state"] == "complete":
            outcome = f"{summary['metric']} {_fmt(r['value'])}"
        elif r["state"] == "pruned":
            outcome = f"pruned at step {r['pruned_at_step']}"
        else:
            outcome = r["state"]
        lines.append(f"  trial {r['number']:>3}  {outcome:<28} {shown}")
    best = summary["best"]
    if best:
        values = " ".join(f"{k}={_fmt(v)}" for k, v in best["params"].items())
        lines.append(f"\n  best: trial {best['number']}  {summary['metric']} {_fmt(best['value'])}  {values}")
    else:
        lines.append("\n  best: none (no trial completed)")
    return lines


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def parallel_coordinates(summary: dict[str, Any], param_log: dict[str, bool] | None = None) -> bytes | None:
    """Parallel coordinates: one axis per searched key and one for the objective, one line per
    completed trial coloured by its objective (pruned trials dashed grey, at their sampled
    values). Log-scaled keys are placed on a log axis; choices by their order. None when no
    trial has values to draw."""
    rows = [r for r in summary["trials"] if r["params"] and r["state"] in ("complete", "pruned")]
    if not rows:
        return None
    from tuneline.report.plots import _png, _pyplot

    plt = _pyplot()
    keys = list(dict.fromkeys(k for r in rows for k in r["params"]))
    log = param_log or {}

    def positions(values: list[Any], is_log: bool) -> tuple[list[float | None], list[str]]:
        present = [v for v in values if v is not None]
        if any(isinstance(v, (str, bool)) or v is None for v in present) or not present:
            order = list(dict.fromkeys(str(v) for v in present))
            n = max(len(order) - 1, 1)
            return [order.index(str(v)) / n if v is not None else None for v in values], order
        nums = [math.log10(v) if is_log and v > 0 else float(v) for v in present]
        lo, hi = min(nums), max(nums)
        span = (hi - lo) or 1.0
        out = []
        for v in values:
            if v is None:
                out.append(None)
                continue
            x = math.log10(v) if is_log and v > 0 else float(v)
            out.append((x - lo) / span)
        ticks = [f"{10**lo:.3g}" if is_log else f"{lo:.3g}", f"{10**hi:.3g}" if is_log else f"{hi:.3g}"]
        return out, ticks

    columns = []
    labels = []
    for k in keys:
        pos, ticks = positions([r["params"].get(k) for r in rows], log.get(k, False))
        columns.append(pos)
        labels.append(f"{k}\n[{', '.join(ticks)}]")
    objective = [r["value"] if r["state"] == "complete" else None for r in rows]
    obj_pos, obj_ticks = positions(objective, False)
    columns.append(obj_pos)
    labels.append(f"{summary['metric']}\n[{', '.join(obj_ticks)}]")

    fig, ax = plt.subplots(figsize=(2.2 * len(columns) + 1, 4))
    cmap = plt.get_cmap("viridis")
    best = (summary.get("best") or {}).get("number")
    for i, r in enumerate(rows):
        ys = [col[i] for col in columns]
        xs = [x for x, y in enumerate(ys) if y is not None]
        ys = [y for y in ys if y is not None]
        if r["state"] == "pruned":
            ax.plot(xs, ys, color="#9aa5b1", linestyle="--", linewidth=1, alpha=0.8)
            continue
        good = obj_pos[i] if summary["direction"] == "maximize" else 1 - (obj_pos[i] or 0)
        ax.plot(xs, ys, color=cmap(good or 0), linewidth=3 if r["number"] == best else 1.5, marker="o")
    ax.set_xticks(range(len(columns)))
    ax.set_xticklabels(labels, fontsize=8)
    ax.set_yticks([])
    ax.set_ylim(-0.05, 1.05)
    for x in range(len(columns)):
        ax.axvline(x, color="#444", linewidth=0.8)
    ax.set_title(
        f"{summary['study']}: {len(rows)} trials (bold: best, dashed: pruned; colour: better -> yellow)",
        fontsize=9,
    )
    return _png(fig)
