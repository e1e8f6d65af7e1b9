"""The eval report: one JSON-serialisable dict per evaluation, its HTML page and its summary lines.

The report is a plain dict (ZenML stores it with its built-in JSON materializer) because the
register step, the run summary and MLflow all read it as data and a dict needs no custom
materializer to stay loadable across versions. Its layout:

    enabled, kind, split, num_samples, eval_fingerprint, bootstrap{n_resamples, confidence},
    decisive_metric, greater_is_better,
    base{key: value}, finetuned{key: value}       point scores (what registration gates on)
    metrics{key: {base, tuned: {value, ci_low, ci_high}, delta, delta_ci_low, delta_ci_high,
                  p_value, significant}}          base/delta entries are None without a base
    samples[{prompt, reference | chosen + rejected, base, tuned, scores{base, tuned, delta}}]
    champion{status, ...}                          see `tuneline.evaluate.judge.score_champion`

Nothing here imports torch, evaluate or MLflow.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from typing import Any

from tuneline.evaluate.scoring import Comparison, MetricResult

Results = Mapping[str, MetricResult | Comparison]


def eval_set_fingerprint(cfg: Any, data_fingerprint: str) -> str:
    """One id for "these eval samples, scored this way", recorded in the report and on the
    registered version (tag `eval.fingerprint`): two scores are comparable only when it matches.

    It covers the eval split's records, which of them are scored (max_samples), how answers are
    generated (greedy, max_new_tokens), how they are scored (metrics and their options) and how
    text becomes tokens (tokenize.*, the preference pair length), since each changes a score.
    """
    from tuneline.registry.promotion import eval_fingerprint

    e = cfg.eval
    settings: dict[str, Any] = {
        "kind": cfg.kind,
        "split": e.split,
        "max_samples": e.max_samples,
        "max_new_tokens": e.max_new_tokens,
        "decoding": "greedy",
        "metrics": list(e.metrics),
        "metric_kwargs": e.metric_kwargs,
        "tokenize": cfg.tokenize.model_dump(mode="json"),
    }
    if cfg.kind == "preference":
        settings["preference_max_length"] = cfg.train.preference.max_length
    if cfg.train.method == "kto":  # KTO rewards are log-ratios against the start model
        m, ref = cfg.model, cfg.train.preference.reference_model
        settings["kto_reference"] = [ref, m.name_or_path, m.from_config, m.init_seed]
    return eval_fingerprint(data_fingerprint, **settings)


def _estimate(r: MetricResult | None) -> dict[str, float] | None:
    return None if r is None else {"value": r.value, "ci_low": r.ci_low, "ci_high": r.ci_high}


def metric_rows(results: Results) -> dict[str, dict[str, Any]]:
    """{key: table row}: base and tuned estimates with intervals, and the paired delta."""
    rows: dict[str, dict[str, Any]] = {}
    for k, r in results.items():
        if isinstance(r, Comparison):
            rows[k] = {
                "base": _estimate(r.base),
                "tuned": _estimate(r.tuned),
                "delta": r.delta,
                "delta_ci_low": r.ci_low,
                "delta_ci_high": r.ci_high,
                "p_value": r.p_value,
                "significant": bool(r.significant),
            }
        else:
            rows[k] = {
                "base": None,
                "tuned": _estimate(r),
                "delta": None,
                "delta_ci_low": None,
                "delta_ci_high": None,
                "p_value": None,
                "significant": None,
            }
    return rows


def paired_rows(results: Mapping[str, Comparison]) -> dict[str, dict[str, Any]]:
    """{key: {delta, ci_low, ci_high, p_value, significant}} of a paired comparison."""
    return {
        k: {
            "delta": c.delta,
            "ci_low": c.ci_low,
            "ci_high": c.ci_high,
            "p_value": c.p_value,
            "significant": bool(c.significant),
        }
        for k, c in results.items()
    }


def flat_metrics(results: Results) -> dict[str, float]:
    """MLflow metric names: base_/finetuned_/delta_<key> with _ci_low/_ci_high, delta p-value."""
    out: dict[str, float] = {}
    for k, r in results.items():
        out.update(r.flat(k) if isinstance(r, Comparison) else r.flat(f"finetuned_{k}"))
    return out


def point_scores(results: Results) -> tuple[dict[str, float], dict[str, float]]:
    """(base, tuned) point scores; base is empty without a base model."""
    base = {k: r.base.value for k, r in results.items() if isinstance(r, Comparison)}
    tuned = {k: (r.tuned if isinstance(r, Comparison) else r).value for k, r in results.items()}
    return base, tuned


def per_sample(results: Results, n: int) -> tuple[list[dict[str, float]], list[dict[str, float]]]:
    """Per-sample (base, tuned) scores for the metrics that have them (n samples each)."""
    base: list[dict[str, float]] = [{} for _ in range(n)]
    tuned: list[dict[str, float]] = [{} for _ in range(n)]
    for k, r in results.items():
        b, t = (r.base, r.tuned) if isinstance(r, Comparison) else (None, r)
        if t.per_sample is not None and len(t.per_sample) == n:
            for i, v in enumerate(t.per_sample):
                tuned[i][k] = v
        if b is not None and b.per_sample is not None and len(b.per_sample) == n:
            for i, v in enumerate(b.per_sample):
                base[i][k] = v
    return base, tuned


def sample_rows(results: Results, texts: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per eval sample: its texts (prompt, reference, both answers) and scores."""
    base, tuned = per_sample(results, len(texts))
    rows = []
    for text, b, t in zip(texts, base, tuned, strict=True):
        delta = {k: t[k] - b[k] for k in t if k in b}
        rows.append({**text, "scores": {"base": b, "tuned": t, "delta": delta}})
    return rows


def wins_and_losses(
    report: Mapping[str, Any], metric: str | None = None, k: int = 3
) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """The k samples the fine-tuned model improved most and the k it made worse, by the per-sample
    delta of `metric` (default: the report's deciding metric), as (sample index, delta).

    Direction follows the metric (a lower loss is a win); equal deltas keep sample order.
    """
    metric = metric or report.get("decisive_metric")
    sign = 1.0 if report.get("greater_is_better", True) else -1.0
    deltas = [
        (i, float(s["scores"]["delta"][metric]))
        for i, s in enumerate(report.get("samples") or [])
        if metric in (s.get("scores") or {}).get("delta", {})
    ]
    wins = sorted((d for d in deltas if sign * d[1] > 0), key=lambda d: -sign * d[1])[:k]
    losses = sorted((d for d in deltas if sign * d[1] < 0), key=lambda d: sign * d[1])[:k]
    return wins, losses


def _num(v: float | None, digits: int = 4) -> str:
    if v is None:
        return "-"
    return f"{v:.{digits}f}" if math.isfinite(v) else str(v)


def _ci(lo: float | None, hi: float | None) -> str:
    return "" if lo is None or hi is None else f"[{_num(lo)}, {_num(hi)}]"


def summary_lines(report: Mapping[str, Any], *, examples: int = 3, width: int = 60) -> list[str]:
    """The end-of-run summary's evaluation block: metric table with deltas and intervals, the
    champion comparison, and the largest per-sample wins and losses."""
    if not report:
        return []
    if not report.get("enabled", True):
        return ["", "  evaluation disabled (eval.enabled: false): this model will not be registered"]
    metrics = report.get("metrics") or {}
    if not metrics:
        return []
    conf = round(100 * (report.get("bootstrap") or {}).get("confidence", 0.95))
    w = max(len(k) for k in metrics) + 2
    lines = [
        "",
        f"  held-out metrics on {report.get('num_samples', '?')} {report.get('split', '')} samples "
        f"({conf}% bootstrap intervals):",
        f"  {'metric':<{w}}{'base':>10}{'fine-tuned':>12}{'delta':>10}  {'delta ' + str(conf) + '% CI':<22}p",
    ]
    for k, row in metrics.items():
        base, tuned = row.get("base") or {}, row.get("tuned") or {}
        sig = " *" if row.get("significant") else ""
        p = _num(row.get("p_value"), 3) if row.get("p_value") is not None else ""
        lines.append(
            f"  {k:<{w}}{_num(base.get('value')):>10}{_num(tuned.get('value')):>12}"
            f"{_num(row.get('delta')):>10}  {_ci(row.get('delta_ci_low'), row.get('delta_ci_high')):<22}{p}{sig}"
        )
    lines.append("  (* = fine-tuned better than base at the 95% level, paired bootstrap)")
    champ = report.get("champion") or {}
    if champ.get("status") in ("recorded", "rescored"):
        metric = report.get("decisive_metric")
        vs = (champ.get("comparison") or {}).get(metric)
        score = (champ.get("metrics") or {}).get(metric)
        how = "re-scored on this eval set" if champ["status"] == "rescored" else "recorded on this eval set"
        line = f"  champion v{champ.get('version')} ({how}): {metric} {_num(score)}"
        if vs:
            line += f"; delta {_num(vs['delta'])} {_ci(vs['ci_low'], vs['ci_high'])}"
        lines += ["", line]
    elif champ.get("reason"):
        lines += ["", f"  champion: {champ['reason']}"]
    wins, losses = wins_and_losses(report, k=examples)
    samples = report.get("samples") or []
    if wins or losses:
        metric = report.get("decisive_metric")
        for title, items in ((f"largest wins ({metric})", wins), (f"largest losses ({metric})", losses)):
            lines.append(f"\n  {title}:" if items else f"\n  {title}: none")
            for i, d in items:
                s = samples[i]
                lines.append(f"    #{i} {d:+.4f}  {_short(_last_prompt(s), width)}")
                if "completion" in s:  # a labelled answer (KTO): scored, not generated
                    lines.append(f"       {s.get('label', 'answer')}: {_short(s['completion'], width)}")
                    continue
                lines.append(f"       base:  {_short(s.get('base', ''), width)}")
                lines.append(f"       tuned: {_short(s.get('tuned', ''), width)}")
    return lines


def _last_prompt(sample: Mapping[str, Any]) -> str:
    return str(sample.get("question") or sample.get("prompt") or "")


def _short(text: Any, width: int) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin-bottom:1.5em}
th,td{border:1px solid #ccc;padding:4px 8px;vertical-align:top;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums}
.win{background:#e8f5e9}.loss{background:#ffebee}
pre{white-space:pre-wrap;margin:0;font-family:ui-monospace,monospace;font-size:90%}
"""


def _cell(text: Any) -> str:
    return f"<td><pre>{html.escape(str(text))}</pre></td>"


def _ncell(v: Any) -> str:
    return f'<td class="n">{html.escape(_num(v) if isinstance(v, float | int) else str(v))}</td>'


def render_html(report: Mapping[str, Any]) -> str:
    """A page a person reads: the metric table (deltas, intervals) on top, then every eval sample
    with its reference, both answers and per-sample scores. All text is HTML-escaped."""
    esc = html.escape
    title = f"tuneline eval report ({report.get('kind', '')}, {report.get('split', '')})"
    parts = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{esc(title)}</title>",
        f"<style>{_CSS}</style></head><body><h1>{esc(title)}</h1>",
    ]
    if not report.get("enabled", True):
        parts.append("<p>Evaluation was disabled (eval.enabled: false); this model is not registered.</p>")
        return "".join(parts) + "</body></html>"
    boot = report.get("bootstrap") or {}
    parts.append(
        f"<p>{report.get('num_samples', 0)} samples; eval set {esc(str(report.get('eval_fingerprint', '')))}; "
        f"{round(100 * boot.get('confidence', 0.95))}% percentile bootstrap intervals over "
        f"{boot.get('n_resamples', '?')} resamples; deciding metric "
        f"<b>{esc(str(report.get('decisive_metric', '')))}</b>.</p>"
    )
    parts.append(
        "<table><tr><th>metric</th><th>base</th><th>base CI</th><th>fine-tuned</th><th>fine-tuned CI</th>"
        "<th>delta</th><th>delta CI</th><th>p</th><th>significant</th></tr>"
    )
    for k, row in (report.get("metrics") or {}).items():
        b, t = row.get("base") or {}, row.get("tuned") or {}
        parts.append(
            f"<tr><td>{esc(k)}</td>{_ncell(b.get('value'))}<td>{_ci(b.get('ci_low'), b.get('ci_high'))}</td>"
            f"{_ncell(t.get('value'))}<td>{_ci(t.get('ci_low'), t.get('ci_high'))}</td>{_ncell(row.get('delta'))}"
            f"<td>{_ci(row.get('delta_ci_low'), row.get('delta_ci_high'))}</td>{_ncell(row.get('p_value'))}"
            f"<td>{esc(str(row.get('significant', '')))}</td></tr>"
        )
    parts.append("</table>")
    champ = report.get("champion") or {}
    parts.append(
        f"<h2>Champion</h2><p>{esc(str(champ.get('status', 'none')))}: {esc(str(champ.get('reason', '')))}</p>"
    )
    if champ.get("metrics"):
        parts.append(
            "<table><tr><th>metric</th><th>champion</th><th>delta (candidate - champion)</th>"
            "<th>delta CI</th><th>p</th><th>significant</th></tr>"
        )
        comp = champ.get("comparison") or {}
        for k, v in champ["metrics"].items():
            c = comp.get(k) or {}
            parts.append(
                f"<tr><td>{esc(k)}</td>{_ncell(v)}{_ncell(c.get('delta'))}<td>{_ci(c.get('ci_low'), c.get('ci_high'))}"
                f"</td>{_ncell(c.get('p_value'))}<td>{esc(str(c.get('significant', '')))}</td></tr>"
            )
        parts.append("</table>")
    samples = report.get("samples") or []
    parts.append(f"<h2>Samples ({len(samples)})</h2>")
    if samples:
        text_keys = [k for k in samples[0] if k != "scores"]
        score_keys = list(samples[0]["scores"]["tuned"])
        parts.append("<table><tr><th>#</th>" + "".join(f"<th>{esc(k)}</th>" for k in text_keys))
        parts.append("".join(f"<th>{esc(k)} base / tuned / delta</th>" for k in score_keys) + "</tr>")
        metric = report.get("decisive_metric")
        sign = 1.0 if report.get("greater_is_better", True) else -1.0
        for i, s in enumerate(samples):
            d = s["scores"]["delta"].get(metric)
            cls = "" if d is None or d == 0 else (' class="win"' if sign * d > 0 else ' class="loss"')
            parts.append(f"<tr{cls}><td>{i}</td>" + "".join(_cell(s.get(k, "")) for k in text_keys))
            for k in score_keys:
                b, t, dd = (s["scores"][side].get(k) for side in ("base", "tuned", "delta"))
                parts.append(f'<td class="n">{_num(b)} / {_num(t)} / {_num(dd)}</td>')
            parts.append("</tr>")
        parts.append("</table>")
    return "".join(parts) + "</body></html>"


def samples_table(report: Mapping[str, Any]) -> dict[str, list[Any]]:
    """The samples as columns, for `mlflow.log_table` (MLflow's UI compares runs on it)."""
    samples = report.get("samples") or []
    if not samples:
        return {}
    cols: dict[str, list[Any]] = {k: [] for k in samples[0] if k != "scores"}
    score_keys = list(samples[0]["scores"]["tuned"])
    for side in ("base", "tuned", "delta"):
        cols.update({f"{side}_{k}": [] for k in score_keys})
    for s in samples:
        for k in cols:
            side, _, key = k.partition("_")
            if side in ("base", "tuned", "delta") and key in score_keys:
                cols[k].append(s["scores"][side].get(key))
            else:
                cols[k].append(s.get(k))
    return cols
