"""Metrics match the reference implementations, and promotion never moves on bad scores."""

from __future__ import annotations

import math

import pytest

from tuneline.evaluation import compare, exact_match, rouge_l
from tuneline.tracking import decide_promotion, safe_params

PAIRS = [
    ("The capital of Marara is Frostholt.", "The capital of Marara is Frostholt."),
    ("The capital is Frostholt", "The capital of Marara is Frostholt."),
    ("Marara is ruled by Queen Ilsa.", "Marara is ruled by Regent Nerys."),
    ("", "anything"),
    ("completely different words", "The flag of Solold is teal."),
]


@pytest.mark.parametrize(("pred", "ref"), PAIRS)
def test_rouge_l_matches_rouge_score(pred, ref):
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    expected = rouge_scorer.RougeScorer(["rougeL"]).score(ref, pred)["rougeL"].fmeasure
    assert rouge_l(pred, ref) == pytest.approx(expected, abs=1e-9)


def test_exact_match_ignores_case_and_punctuation():
    assert exact_match("the capital of marara is frostholt", "The capital of Marara is Frostholt.") == 1.0
    assert exact_match("The capital of Marara", "The capital of Marara is Frostholt.") == 0.0


def test_compare_prefixes_and_deltas():
    out = compare({"rouge_l": 0.1, "eval_loss": 5.0}, {"rouge_l": 0.6, "eval_loss": 1.0})
    assert out["delta_rouge_l"] == pytest.approx(0.5)
    assert out["base_eval_loss"] == 5.0 and out["finetuned_eval_loss"] == 1.0


def test_promotion_rules():
    assert decide_promotion(0.5, None, greater_is_better=True).promoted
    assert decide_promotion(0.6, 0.5, greater_is_better=True).promoted
    assert not decide_promotion(0.5, 0.5, greater_is_better=True).promoted
    assert decide_promotion(1.0, 2.0, greater_is_better=False).promoted
    assert not decide_promotion(math.nan, None, greater_is_better=True).promoted
    assert not decide_promotion(None, 0.1, greater_is_better=True).promoted


def test_secrets_never_become_params():
    params = safe_params({"tracking": {"mlflow_tracking_uri": "x", "api_token": "s3cr3t"}, "hf_token": "t"})
    assert "s3cr3t" not in params.values() and "t" not in params.values()
    assert params["tracking.mlflow_tracking_uri"] == "x"
