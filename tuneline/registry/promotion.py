"""The promotion gate: when a candidate may take `@champion`, as a pure function of scores.

A candidate must *beat* what it would replace: the champion, or, with no champion yet, its
own base model. Beating means a gain strictly above `registry.min_margin` on the deciding
metric, so a tie (ROUGE-L 0.0 -> 0.0) never wins; at an exact tie on the deciding metric the
policy's tie-break metric (DPO: the log-prob margin at equal preference accuracy) must be
strictly better. With `registry.require_significance` the paired bootstrap against that same
reference must also say the gain is real. Scores are only compared on one eval set: a
version scored on a different set (other data, other `max_samples`, other generation
settings) is not comparable, and the gate refuses rather than guess.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from tuneline.errors import TunelineError
from tuneline.registry import tags as T

# At an exact tie on the deciding metric, the metric that breaks it (both higher-is-better).
DEFAULT_TIE_BREAK = {
    "preference_accuracy": "logprob_margin",
    "preference_accuracy_normalized": "logprob_margin_normalized",
}


class IncomparableScores(TunelineError):
    """Two scores from different eval sets were about to be compared: the caller must re-score."""


@dataclass(frozen=True)
class PromotionPolicy:
    """How `registry.*` turns scores into a decision."""

    metric: str
    greater_is_better: bool = True
    min_margin: float = 0.0
    require_significance: bool = False
    tie_break: str | None = None
    tie_break_greater_is_better: bool = True

    def __post_init__(self) -> None:
        if not math.isfinite(self.min_margin) or self.min_margin < 0:
            raise ValueError(f"min_margin must be a finite number >= 0, got {self.min_margin}")

    @classmethod
    def from_config(cls, registry: Any) -> PromotionPolicy:
        """From a resolved `RegistryConfig` (metric and greater_is_better already defaulted by method)."""
        metric = registry.metric
        return cls(
            metric=metric,
            greater_is_better=bool(registry.greater_is_better),
            min_margin=float(getattr(registry, "min_margin", 0.0)),
            require_significance=bool(getattr(registry, "require_significance", False)),
            tie_break=getattr(registry, "tie_break_metric", None) or DEFAULT_TIE_BREAK.get(metric),
        )

    def sign(self) -> int:
        return 1 if self.greater_is_better else -1

    def sort_key(self, metrics: Mapping[str, float]) -> tuple[float, float]:
        """Larger is better; a missing or non-finite score sorts last."""

        def oriented(name: str | None, greater: bool) -> float:
            value = metrics.get(name) if name else None
            if value is None or not math.isfinite(value):
                return -math.inf
            return value if greater else -value

        return (
            oriented(self.metric, self.greater_is_better),
            oriented(self.tie_break, self.tie_break_greater_is_better),
        )


@dataclass(frozen=True)
class Scored:
    """Scores of one model on one eval set. `version` is None for the base model."""

    metrics: Mapping[str, float]
    eval_fingerprint: str
    version: str | None = None

    @property
    def label(self) -> str:
        return "base" if self.version is None else f"v{self.version}"


@dataclass(frozen=True)
class Significance:
    """The paired bootstrap's verdict on candidate - reference, as the evaluation step computed it.

    `against` names the reference the bootstrap paired with ("base" or "v3"); a verdict against
    another reference than the one the gate ends up comparing with is not used.
    """

    significant: bool
    against: str | None = None
    p_value: float | None = None
    delta: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None

    @classmethod
    def from_estimate(cls, estimate: Any, against: str | None = None) -> Significance:
        """From any object with the paired bootstrap's fields (`significant`, `p_value`, `delta`, `ci_*`)."""
        return cls(
            significant=bool(estimate.significant),
            against=against,
            p_value=getattr(estimate, "p_value", None),
            delta=getattr(estimate, "delta", None),
            ci_low=getattr(estimate, "ci_low", None),
            ci_high=getattr(estimate, "ci_high", None),
        )

    def describe(self) -> str:
        parts = ["significant" if self.significant else "not significant"]
        if self.p_value is not None:
            parts.append(f"p={self.p_value:.4g}")
        if self.delta is not None:
            parts.append(f"delta={self.delta:.4g}")
        if self.ci_low is not None and self.ci_high is not None:
            parts.append(f"CI [{self.ci_low:.4g}, {self.ci_high:.4g}]")
        if self.against:
            parts.append(f"vs {self.against}")
        return " ".join(parts)


Outcome = Literal["champion", "challenger"]


@dataclass(frozen=True)
class Decision:
    """What the gate decided and everything needed to audit it later from the version's tags."""

    outcome: Outcome
    reason: str
    metric: str
    candidate_score: float | None
    reference: str  # "base", "v3", or "none"
    reference_score: float | None
    min_margin: float = 0.0
    significance: Significance | None = None
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def promoted(self) -> bool:
        return self.outcome == "champion"

    def tags(self) -> dict[str, str]:
        out = {
            T.DECISION: self.outcome,
            T.DECISION_REASON: self.reason,
            T.DECISION_METRIC: self.metric,
            T.DECISION_CANDIDATE: ""
            if self.candidate_score is None
            else T.format_score(self.candidate_score),
            T.DECISION_REFERENCE: self.reference,
            T.DECISION_REFERENCE_SCORE: ""
            if self.reference_score is None
            else T.format_score(self.reference_score),
            T.DECISION_MIN_MARGIN: T.format_score(self.min_margin),
            T.DECISION_SIGNIFICANCE: self.significance.describe() if self.significance else "not computed",
        }
        out.update(self.extra)
        return out


def eval_fingerprint(data_fingerprint: str, **settings: Any) -> str:
    """One id for "these samples, scored this way": the eval split's data fingerprint plus every
    setting that changes a score (max_samples, max_new_tokens, decoding, metric options)."""
    payload = json.dumps({"data": data_fingerprint, **settings}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _fmt(value: float | None) -> str:
    return "none" if value is None else f"{value:.4f}"


def decide(
    candidate: Scored,
    reference: Scored | None,
    policy: PromotionPolicy,
    significance: Significance | bool | None = None,
) -> Decision:
    """Champion only if the candidate beats `reference` (the champion, or the base model when
    there is no champion) by more than `policy.min_margin` and, when required, significantly.

    Raises IncomparableScores when the two were scored on different eval sets.
    """
    metric = policy.metric
    ref_label = reference.label if reference is not None else "none"
    score = candidate.metrics.get(metric)
    ref_score = reference.metrics.get(metric) if reference is not None else None
    sig = Significance(significant=significance) if isinstance(significance, bool) else significance

    def verdict(outcome: Outcome, reason: str) -> Decision:
        return Decision(outcome, reason, metric, score, ref_label, ref_score, policy.min_margin, sig)

    if reference is not None and reference.eval_fingerprint != candidate.eval_fingerprint:
        raise IncomparableScores(
            f"{metric} of the candidate (eval set {candidate.eval_fingerprint}) and of {ref_label} "
            f"(eval set {reference.eval_fingerprint}) come from different eval sets; score {ref_label} "
            "on the candidate's eval set before deciding"
        )
    if score is None or not math.isfinite(score):
        return verdict("challenger", f"candidate has no finite {metric} ({score})")
    if reference is None:
        return verdict(
            "challenger",
            f"no champion and no base score to beat: {metric} {_fmt(score)} proves no improvement "
            "(score the base model: eval.compare_base: true)",
        )
    if ref_score is None or not math.isfinite(ref_score):
        return verdict("challenger", f"{ref_label} has no finite {metric} on this eval set ({ref_score})")
    gain = (score - ref_score) * policy.sign()
    head = f"{metric} {_fmt(score)} vs {ref_label} {_fmt(ref_score)}"
    if gain == 0 and policy.min_margin == 0 and policy.tie_break:
        tb, tb_ref = candidate.metrics.get(policy.tie_break), reference.metrics.get(policy.tie_break)
        if tb is None or tb_ref is None or not (math.isfinite(tb) and math.isfinite(tb_ref)):
            return verdict("challenger", f"{head}: tie, and no finite {policy.tie_break} to break it")
        tb_gain = (tb - tb_ref) * (1 if policy.tie_break_greater_is_better else -1)
        if tb_gain <= 0:
            return verdict(
                "challenger",
                f"{head}: tie, and {policy.tie_break} {_fmt(tb)} is not better than {_fmt(tb_ref)}",
            )
        head = f"{head}: tie, broken by {policy.tie_break} {_fmt(tb)} vs {_fmt(tb_ref)}"
    elif gain <= policy.min_margin:
        if policy.min_margin:
            why = f"gain {gain:.4f} is not above registry.min_margin={policy.min_margin:g}"
        else:
            why = f"not better than {ref_label} (gain {gain:.4f})"
        return verdict("challenger", f"{head}: {why}")
    else:
        head = f"{head}: gain {gain:.4f} > registry.min_margin={policy.min_margin:g}"
    if policy.require_significance:
        if sig is None:
            return verdict(
                "challenger",
                f"{head}, but registry.require_significance is set and no paired bootstrap vs {ref_label} "
                "was computed",
            )
        if sig.against is not None and sig.against != ref_label:
            return verdict(
                "challenger",
                f"{head}, but the paired bootstrap was against {sig.against}, not {ref_label}; "
                "re-run evaluation to compare with the current champion",
            )
        if not sig.significant:
            return verdict("challenger", f"{head}, but not significant ({sig.describe()})")
        head = f"{head}, {sig.describe()}"
    return verdict("champion", head)
