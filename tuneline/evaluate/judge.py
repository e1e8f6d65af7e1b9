"""Judging a fine-tuned model on one eval set: against the model it started from, and against
the registry champion, with bootstrap intervals and paired deltas throughout.

`evaluate_sft` / `evaluate_preference` are what the pipeline's evaluation steps run; they
return the report (see `tuneline.evaluate.report`) and the flat metrics logged to MLflow.
The champion is looked up here, inside evaluation, because comparing against it needs the
same samples: a champion scored on another eval set is re-scored now, one scored on this set
keeps its recorded scores.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from tuneline.config import ProjectConfig
from tuneline.data.records import Record
from tuneline.evaluate.bootstrap import (
    DEFAULT_CONFIDENCE,
    DEFAULT_SEED,
    SufficientStatistics,
    estimates,
    mean_statistics,
    paired_estimates,
    replicates,
)
from tuneline.evaluate.generate import (
    GenerationResult,
    LossSums,
    PairScores,
    eval_loss_sums,
    generate_answers,
    load_start_model,
    load_trained_model,
    preference_pair_scores,
)
from tuneline.evaluate.report import (
    Results,
    eval_set_fingerprint,
    flat_metrics,
    metric_rows,
    paired_rows,
    point_scores,
    sample_rows,
)
from tuneline.evaluate.scoring import Comparison, MetricResult, compare_systems, score
from tuneline.tokenize import TokenizedSplit

log = logging.getLogger("tuneline")

LOWER_IS_BETTER = frozenset({"eval_loss"})


@dataclass
class SystemOutput:
    """One model's outputs on the eval set, before scoring."""

    loss: LossSums | None = None
    gen: GenerationResult | None = None
    pairs: PairScores | None = None
    feedback: Any = None  # labelled answers (KTO): tuneline.evaluate.feedback.FeedbackScores


def run_sft(
    cfg: ProjectConfig, model: Any, tokenizer: Any, split: TokenizedSplit | None, records: list[Record]
) -> SystemOutput:
    """Per-row eval loss on the tokenized split (when given) and greedy answers to the records."""
    from tuneline.tokenize import end_of_turn_token_ids
    from tuneline.train.padding_free import collator_for

    out = SystemOutput()
    if split is not None:
        # Packed rows in the layout this model's attention keeps apart (padded samples otherwise).
        collator = collator_for(model, tokenizer.pad_token_id, split.position_ids is not None, training=False)
        out.loss = eval_loss_sums(model, split, collator, cfg.eval.batch_size)
    out.gen = generate_answers(
        model,
        tokenizer,
        records,
        max_new_tokens=cfg.eval.max_new_tokens,
        batch_size=cfg.eval.batch_size,
        stop_token_ids=end_of_turn_token_ids(tokenizer),
        tokenize_cfg=cfg.tokenize,
    )
    return out


def run_preference(cfg: ProjectConfig, model: Any, tokenizer: Any, records: list[Record]) -> SystemOutput:
    from tuneline.tokenize import preference_tokenize_config

    return SystemOutput(
        pairs=preference_pair_scores(model, tokenizer, records, preference_tokenize_config(cfg))
    )


def _loss_statistics(loss: LossSums | None) -> SufficientStatistics | None:
    """Eval loss as a ratio of sums (loss / supervised tokens), so every resample is weighted by
    tokens exactly as the point value is; rows without supervised tokens carry no loss."""
    if loss is None:
        return None
    rows = [(s, c) for s, c in zip(loss.sums, loss.counts, strict=True) if c > 0]
    if not rows:
        return None

    def from_totals(totals: np.ndarray, _n: int) -> dict[str, float]:
        return {"eval_loss": float(totals[0] / totals[1])}

    return SufficientStatistics(np.asarray(rows, dtype=np.float64), from_totals)


def _stats_results(
    base: SufficientStatistics | None,
    tuned: SufficientStatistics,
    cfg: ProjectConfig,
    *,
    per_sample: bool = True,
) -> dict[str, MetricResult | Comparison]:
    """MetricResults (or Comparisons, with a base on the same samples) of statistics-defined scores.

    per_sample=False when a row is not an eval sample (a tokenized, possibly packed, row of eval
    loss), so its values are not shown next to the generated answers.
    """
    n, n_res = tuned.n, cfg.eval.bootstrap_resamples
    tuned_reps = replicates(tuned, n, n_resamples=n_res, seed=DEFAULT_SEED)
    tuned_est = estimates(tuned_reps, DEFAULT_CONFIDENCE)
    rows = tuned.per_sample()
    tuned_ps = {k: tuple(float(r[k]) for r in rows) if per_sample else None for k in tuned_est}  # type: ignore[arg-type]
    tuned_res = {k: MetricResult(e.value, e.ci_low, e.ci_high, tuned_ps[k]) for k, e in tuned_est.items()}
    if base is None or base.n != n:
        return dict(tuned_res)
    base_reps = replicates(base, n, n_resamples=n_res, seed=DEFAULT_SEED)
    base_est = estimates(base_reps, DEFAULT_CONFIDENCE)
    brows = base.per_sample()
    deltas = paired_estimates(
        base_reps, tuned_reps, DEFAULT_CONFIDENCE, greater_is_better=lambda k: k not in LOWER_IS_BETTER
    )
    out: dict[str, MetricResult | Comparison] = {}
    for k, d in deltas.items():
        b = base_est[k]
        out[k] = Comparison(
            base=MetricResult(
                b.value,
                b.ci_low,
                b.ci_high,
                tuple(float(r[k]) for r in brows) if per_sample else None,  # type: ignore[arg-type]
            ),
            tuned=tuned_res[k],
            delta=d.delta,
            ci_low=d.ci_low,
            ci_high=d.ci_high,
            p_value=d.p_value,
            significant=d.significant,
        )
    return out


def score_outputs(
    cfg: ProjectConfig, base: SystemOutput | None, tuned: SystemOutput
) -> dict[str, MetricResult | Comparison]:
    """Every score of `tuned`, paired with `base` where base has the same samples: the
    `eval.metrics` scores of generated answers first, then eval loss, then preference scores."""
    out: dict[str, MetricResult | Comparison] = {}
    e = cfg.eval
    if tuned.gen is not None and tuned.gen.predictions:
        opts = {"metric_kwargs": e.metric_kwargs, "n_resamples": e.bootstrap_resamples}
        if (
            base is not None
            and base.gen is not None
            and len(base.gen.predictions) == len(tuned.gen.predictions)
        ):
            out.update(
                compare_systems(
                    e.metrics, base.gen.predictions, tuned.gen.predictions, tuned.gen.references, **opts
                )
            )
        else:
            out.update(score(e.metrics, tuned.gen.predictions, tuned.gen.references, **opts))
    tuned_loss = _loss_statistics(tuned.loss)
    if tuned_loss is not None:
        base_loss = _loss_statistics(base.loss if base else None)
        out.update(_stats_results(base_loss, tuned_loss, cfg, per_sample=False))
    if tuned.pairs is not None and tuned.pairs.prompts:
        base_pairs = (
            base.pairs if base is not None and base.pairs is not None and base.pairs.prompts else None
        )
        out.update(
            _stats_results(
                mean_statistics(base_pairs.per_pair) if base_pairs else None,
                mean_statistics(tuned.pairs.per_pair),
                cfg,
            )
        )
    if tuned.feedback is not None and tuned.feedback.prompts:
        from tuneline.evaluate.feedback import feedback_statistics

        base_fb = base.feedback if base is not None and base.feedback is not None else None
        base_stats = feedback_statistics(base_fb) if base_fb and base_fb.prompts else None
        out.update(_stats_results(base_stats, feedback_statistics(tuned.feedback), cfg))
    return out


def _texts(base: SystemOutput | None, tuned: SystemOutput) -> list[dict[str, Any]]:
    """What a person reads per sample: the prompt, the reference and both answers (or the pair)."""
    if tuned.gen is not None and tuned.gen.predictions:
        g, b = tuned.gen, (base.gen if base is not None and base.gen is not None else None)
        return [
            {
                "question": g.questions[i],
                "prompt": g.prompts[i],
                "reference": g.references[i],
                "base": b.predictions[i] if b is not None and i < len(b.predictions) else "",
                "tuned": g.predictions[i],
            }
            for i in range(len(g.predictions))
        ]
    if tuned.feedback is not None:
        from tuneline.evaluate.feedback import texts

        return texts(base, tuned)
    if tuned.pairs is not None:
        p = tuned.pairs
        return [
            {"prompt": p.prompts[i], "chosen": p.chosen[i], "rejected": p.rejected[i]}
            for i in range(len(p.prompts))
        ]
    return []


# --- the champion -------------------------------------------------------------------------


def recorded_scores(tags: dict[str, str], fingerprint: str) -> dict[str, float] | None:
    """A version's recorded scores on eval set `fingerprint`, or None if it has none there:
    `eval.<fingerprint>.<metric>` tags (one set per eval set it was scored on), else its own
    `metric.<name>` tags when its `eval.fingerprint` is this one."""
    from tuneline.registry.tags import EVAL_FINGERPRINT, METRIC_PREFIX, eval_score_key

    prefix = eval_score_key(fingerprint, "")
    raw = {k[len(prefix) :]: v for k, v in tags.items() if k.startswith(prefix)}
    if not raw and tags.get(EVAL_FINGERPRINT) == fingerprint:
        raw = {k[len(METRIC_PREFIX) :]: v for k, v in tags.items() if k.startswith(METRIC_PREFIX)}
    if not raw:
        return None
    out: dict[str, float] = {}
    for k, v in raw.items():
        try:
            out[k] = float(v)
        except ValueError:
            log.warning("champion tag for %s is not a number (%r); ignoring it", k, v)
    return out


def find_champion(client: Any, model_name: str, alias: str) -> tuple[Any | None, str]:
    """(the model version holding @alias, "") or (None, why there is none)."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(model_name, alias), ""
    except MlflowException as e:
        # A registered model without the alias: the SQLite store answers INVALID_PARAMETER_VALUE.
        if e.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise
        return None, f"no version of '{model_name}' holds @{alias}"


def score_champion(
    cfg: ProjectConfig,
    fingerprint: str,
    tuned: SystemOutput,
    client: Any,
    rescore: Callable[[str], SystemOutput],
) -> dict[str, Any]:
    """The report's `champion` section.

    status "skipped" (registry off, promote off, no MLflow), "none" (no champion), "recorded"
    (scores taken from the champion's tags for this eval set: `metrics` only, no per-sample
    values) or "rescored" (the champion was run on this eval set now: `metrics`, `intervals`,
    `per_sample`, `answers`, and `comparison`, the paired bootstrap candidate - champion).
    """
    reg = cfg.registry
    if not reg.enabled or not reg.promote:
        off = "registry.enabled" if not reg.enabled else "registry.promote"
        return {"status": "skipped", "reason": f"{off} is false: no champion to compare with"}
    if client is None:
        return {
            "status": "skipped",
            "reason": "no MLflow registry in this step (stack without an MLflow tracker)",
        }
    mv, why = find_champion(client, reg.model_name, reg.alias)
    if mv is None:
        return {"status": "none", "reason": why}
    from tuneline.registry.tags import EVAL_FINGERPRINT

    tags = dict(mv.tags or {})
    base = {
        "model_name": reg.model_name,
        "alias": reg.alias,
        "version": str(mv.version),
        "run_id": mv.run_id,
        "eval_fingerprint": fingerprint,
        "recorded_eval_fingerprint": tags.get(EVAL_FINGERPRINT),
    }
    recorded = recorded_scores(tags, fingerprint)
    if recorded is not None:
        return {
            **base,
            "status": "recorded",
            "reason": f"v{mv.version} was scored on this eval set; its recorded scores are used",
            "metrics": recorded,
        }
    from tuneline.home import tuneline_home
    from tuneline.tracking import download_model_version

    local = download_model_version(
        client, f"models:/{reg.model_name}/{mv.version}", str(tuneline_home() / "cache" / "models")
    )
    champ = rescore(local)
    paired = {k: c for k, c in score_outputs(cfg, champ, tuned).items() if isinstance(c, Comparison)}
    out = {
        **base,
        "status": "rescored",
        "reason": f"v{mv.version} was scored on another eval set "
        f"({tags.get(EVAL_FINGERPRINT) or 'unrecorded'}); re-scored on this one",
        "metrics": {k: c.base.value for k, c in paired.items()},
        "intervals": {
            k: {"value": c.base.value, "ci_low": c.base.ci_low, "ci_high": c.base.ci_high}
            for k, c in paired.items()
        },
        "per_sample": {
            k: list(c.base.per_sample) for k, c in paired.items() if c.base.per_sample is not None
        },
        "comparison": paired_rows(paired),
    }
    if champ.gen is not None:
        out["answers"] = list(champ.gen.predictions)
    return out


# --- whole evaluations --------------------------------------------------------------------


def build_report(
    cfg: ProjectConfig, fingerprint: str, results: Results, texts: list[dict[str, Any]], champion: dict
) -> dict[str, Any]:
    base, tuned = point_scores(results)
    return {
        "enabled": True,
        "kind": cfg.kind,
        "split": cfg.eval.split,
        "num_samples": len(texts),
        "eval_fingerprint": fingerprint,
        "bootstrap": {
            "n_resamples": cfg.eval.bootstrap_resamples,
            "confidence": DEFAULT_CONFIDENCE,
            "seed": DEFAULT_SEED,
        },
        "decisive_metric": cfg.registry.metric,
        "greater_is_better": bool(cfg.registry.greater_is_better),
        "base": base,
        "finetuned": tuned,
        "metrics": metric_rows(results),
        "samples": sample_rows(results, texts),
        "champion": champion,
    }


def disabled_report() -> dict[str, Any]:
    return {"enabled": False, "reason": "eval.enabled is false: the model was not evaluated"}


def _evaluate(
    cfg: ProjectConfig,
    data_fingerprint: str,
    run: Callable[[Any, Any], SystemOutput],
    model_dir: str,
    tokenizer: Any,
    client: Any,
    rescore: Callable[[str], SystemOutput],
) -> tuple[dict[str, Any], dict[str, float]]:
    base_out = None
    if cfg.eval.compare_base:
        base_model = load_start_model(cfg, len(tokenizer))
        base_out = run(base_model, tokenizer)
        del base_model
    tuned_out = run(load_trained_model(cfg, model_dir, len(tokenizer)), tokenizer)
    results = score_outputs(cfg, base_out, tuned_out)
    fingerprint = eval_set_fingerprint(cfg, data_fingerprint)
    champion = score_champion(cfg, fingerprint, tuned_out, client, rescore)
    report = build_report(cfg, fingerprint, results, _texts(base_out, tuned_out), champion)
    flat = flat_metrics(results)
    for k, c in (champion.get("comparison") or {}).items():
        flat[f"vs_champion_delta_{k}"] = c["delta"]
    return report, flat


def _champion_tokenizer(local: str, tokenizer: Any) -> tuple[Any, bool]:
    """The champion's own tokenizer, and whether it tokenizes exactly as the candidate's does
    (only then is the candidate's tokenized split valid for the champion's eval loss)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(local)
    same = tok.get_vocab() == tokenizer.get_vocab() and tok.chat_template == tokenizer.chat_template
    return tok, same


def evaluate_sft(
    cfg: ProjectConfig,
    model_dir: str,
    tokenizer: Any,
    split: TokenizedSplit | None,
    records: list[Record],
    *,
    data_fingerprint: str,
    client: Any = None,
) -> tuple[dict[str, Any], dict[str, float]]:
    """(report, flat MLflow metrics) for a chat/text model on held-out data."""

    def rescore(local: str) -> SystemOutput:
        tok, same = _champion_tokenizer(local, tokenizer)
        return run_sft(cfg, load_trained_model(cfg, local, len(tok)), tok, split if same else None, records)

    return _evaluate(
        cfg,
        data_fingerprint,
        lambda model, tok: run_sft(cfg, model, tok, split, records),
        model_dir,
        tokenizer,
        client,
        rescore,
    )


def evaluate_preference(
    cfg: ProjectConfig,
    model_dir: str,
    tokenizer: Any,
    records: list[Record],
    *,
    data_fingerprint: str,
    client: Any = None,
) -> tuple[dict[str, Any], dict[str, float]]:
    """(report, flat MLflow metrics) for a preference-tuned model: the base to beat is where training started."""
    if cfg.train.method == "kto":
        from tuneline.evaluate.feedback import evaluate_feedback

        return evaluate_feedback(
            cfg, model_dir, tokenizer, records, data_fingerprint=data_fingerprint, client=client
        )

    def rescore(local: str) -> SystemOutput:
        tok, _ = _champion_tokenizer(local, tokenizer)
        return run_preference(cfg, load_trained_model(cfg, local, len(tok)), tok, records)

    return _evaluate(
        cfg,
        data_fingerprint,
        lambda model, tok: run_preference(cfg, model, tok, records),
        model_dir,
        tokenizer,
        client,
        rescore,
    )
