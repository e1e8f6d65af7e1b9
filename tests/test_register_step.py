"""What the register step hands the registry: the eval report's champion and paired comparisons
turned into the gate's inputs, the `registry.*` keys turned into its policy, and the refusal of
an unevaluated model. The step's whole path runs in tests/test_e2e.py."""

from __future__ import annotations

import pytest

from steps.register_model import champion_inputs, registration_refusal
from tuneline.config import load_config
from tuneline.errors import ConfigError
from tuneline.registry import PromotionPolicy, Scored

FP = "evalset"
ROW = {"delta": 0.1, "ci_low": 0.02, "ci_high": 0.2, "p_value": 0.01, "significant": True}


def test_rescored_champion_is_the_reference_and_its_pairing_the_significance():
    report = {
        "eval_fingerprint": FP,
        "metrics": {"rougeL": {"delta": 0.3, "delta_ci_low": 0.1, "delta_ci_high": 0.4, "significant": True}},
        "champion": {
            "status": "rescored",
            "version": "3",
            "metrics": {"rougeL": 0.4},
            "comparison": {"rougeL": ROW},
        },
    }
    rescored, sig = champion_inputs(report, "rougeL", FP)
    assert rescored == Scored({"rougeL": 0.4}, FP, "3")
    assert sig.against == "v3" and sig.significant and sig.p_value == 0.01 and sig.ci_low == 0.02


def test_without_a_champion_the_significance_is_against_the_base():
    report = {
        "metrics": {
            "rougeL": {"delta": 0.3, "delta_ci_low": 0.1, "delta_ci_high": 0.4, "significant": False}
        },
        "champion": {"status": "none", "reason": "no version holds @champion"},
    }
    rescored, sig = champion_inputs(report, "rougeL", FP)
    assert rescored is None and sig.against == "base" and not sig.significant and sig.ci_low == 0.1


def test_recorded_champion_needs_no_rescore_and_has_no_pairing():
    report = {"metrics": {"rougeL": ROW}, "champion": {"status": "recorded", "version": "2", "metrics": {}}}
    assert champion_inputs(report, "rougeL", FP) == (None, None)


def test_no_base_comparison_means_no_significance():
    report = {"metrics": {"rougeL": {"delta": None, "significant": None}}, "champion": {"status": "skipped"}}
    assert champion_inputs(report, "rougeL", FP) == (None, None)


def test_unevaluated_model_is_refused_with_the_fix():
    reg = load_config("configs/sft.yaml").registry
    why = registration_refusal(reg, {}, {}, evaluated=False)
    assert "eval.enabled is false" in why and "set eval.enabled: true" in why


def test_registry_keys_become_the_policy():
    reg = load_config(
        "configs/sft.yaml",
        [
            "registry.min_margin=0.02",
            "registry.require_significance=true",
            "registry.tie_break_metric=rouge1",
        ],
    ).registry
    assert PromotionPolicy.from_config(reg) == PromotionPolicy(
        metric="rougeL", min_margin=0.02, require_significance=True, tie_break="rouge1"
    )
    dpo = PromotionPolicy.from_config(load_config("configs/dpo.yaml").registry)
    assert dpo.metric == "preference_accuracy" and dpo.tie_break == "logprob_margin"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("registry.min_margin=-0.1", "registry.min_margin"),
        ("registry.tie_break_metric=eval_loss", "registry.tie_break_metric: 'eval_loss' cannot break ties"),
        ("registry.tie_break_metric=rougeL", "registry.tie_break_metric: 'rougeL' cannot break ties"),
    ],
)
def test_bad_registry_keys_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("configs/sft.yaml", [override])
