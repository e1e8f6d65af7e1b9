"""Shipped evaluate metrics load by path offline and match their reference packages; bootstrap CIs and paired deltas."""

from __future__ import annotations

import random
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tuneline.errors import ConfigError
from tuneline.evaluate import (
    SHIPPED_METRICS,
    compare_systems,
    flatten,
    load_metric,
    mean_statistics,
    paired_bootstrap,
    resample_indices,
    score,
)
from tuneline.evaluate.bootstrap import SufficientStatistics
from tuneline.evaluate.scoring import METRICS_DIR, cache_dir

WORDS = "the a cat dog sat ran on under mat rug quickly slowly red blue big small house tree".split()


def _sentences(n: int, seed: int, length: int = 8) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(length)) for _ in range(n)]


def _edit_some(sentences: list[str], every: int, seed: int) -> list[str]:
    """Change one word in every `every`-th sentence: a system that is right most of the time."""
    rng = random.Random(seed)
    out = []
    for i, s in enumerate(sentences):
        words = s.split()
        if i % every == 0:
            words[rng.randrange(len(words))] = "zebra"
        out.append(" ".join(words))
    return out


@pytest.fixture
def no_network(monkeypatch, tuneline_home):
    """Every connection attempt is recorded and refused; evaluate's offline switch is on."""
    attempts: list[tuple] = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network access blocked by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setenv("HF_EVALUATE_OFFLINE", "1")
    return attempts


def test_importing_the_package_loads_no_metric_backend_or_zenml():
    code = (
        "import sys, tuneline.evaluate\n"
        "heavy = {'evaluate', 'zenml', 'sacrebleu', 'rouge_score', 'datasets', 'torch'}\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_shipped_metrics_load_by_path_with_the_network_blocked(no_network):
    for name in SHIPPED_METRICS:
        metric = load_metric(name)
        module_file = Path(sys.modules[type(metric).__module__].__file__)
        assert module_file.is_relative_to(cache_dir() / "modules"), module_file
        assert module_file.read_bytes() == (METRICS_DIR / name / f"{name}.py").read_bytes()
    assert no_network == []


def test_rouge_matches_rouge_score_including_non_ascii_text(no_network):
    from rouge_score import rouge_scorer

    preds = ["the cat sat on the mat", "Der Bär läuft schnell", "completely different words"]
    refs = ["the cat is on the mat", "Der Bär lief schnell", "the cat is on the mat"]
    out = load_metric("rouge").compute(predictions=preds, references=refs, per_sample=True)

    # Known values by hand. Pair 1: 5 of 6 words shared, LCS 5, 3 of 5 bigrams.
    assert out["per_sample"]["rouge1"][0] == pytest.approx(5 / 6, abs=1e-12)
    assert out["per_sample"]["rouge2"][0] == pytest.approx(3 / 5, abs=1e-12)
    assert out["per_sample"]["rougeL"][0] == pytest.approx(5 / 6, abs=1e-12)
    # Pair 2: rouge_score keeps only [a-z0-9], so "bär" is "b r" and "läuft" is "l uft": LCS 4 of
    # 6 and 5 tokens = 8/11. The hand-written ROUGE-L this replaces kept Unicode words: 3/4.
    assert out["per_sample"]["rougeL"][1] == pytest.approx(8 / 11, abs=1e-12)
    assert out["per_sample"]["rougeL"][1] != pytest.approx(3 / 4, abs=1e-3)

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"])
    direct = [scorer.score(r, p) for p, r in zip(preds, refs, strict=True)]
    for key in ("rouge1", "rouge2", "rougeL", "rougeLsum"):
        assert out["per_sample"][key] == [d[key].fmeasure for d in direct]
        assert out[key] == pytest.approx(sum(d[key].fmeasure for d in direct) / 3, abs=1e-12)

    stemmed = load_metric("rouge").compute(
        predictions=["cats running"], references=["cat runs"], use_stemmer=True
    )
    assert stemmed["rouge1"] == pytest.approx(1.0, abs=1e-12)
    assert (
        load_metric("rouge").compute(predictions=["cats running"], references=["cat runs"])["rouge1"] == 0.0
    )
    assert no_network == []


def test_sacrebleu_and_chrf_match_sacrebleu(no_network):
    import sacrebleu

    # Known value from the sacreBLEU metric card: two references per prediction, 39.8.
    preds = ["hello there general kenobi", "on our way to ankh morpork"]
    refs = [["hello there general kenobi", "hello there !"], ["goodbye ankh morpork", "ankh morpork"]]
    out = load_metric("sacrebleu").compute(predictions=preds, references=refs)
    assert round(out["score"], 1) == 39.8
    assert out["score"] == pytest.approx(
        sacrebleu.corpus_bleu(preds, [[r[0] for r in refs], [r[1] for r in refs]]).score, abs=1e-9
    )

    preds, refs = _sentences(30, seed=1), _sentences(30, seed=2)
    bleu = load_metric("sacrebleu").compute(predictions=preds, references=refs)
    expected = sacrebleu.corpus_bleu(preds, [refs])
    assert bleu["score"] == pytest.approx(expected.score, abs=1e-9)
    assert (bleu["counts"], bleu["totals"], bleu["sys_len"], bleu["ref_len"]) == (
        expected.counts,
        expected.totals,
        expected.sys_len,
        expected.ref_len,
    )
    chrf = load_metric("chrf").compute(predictions=preds, references=refs)
    assert chrf["score"] == pytest.approx(sacrebleu.corpus_chrf(preds, [refs]).score, abs=1e-9)
    chrf_pp = load_metric("chrf").compute(predictions=preds, references=refs, word_order=2)
    assert chrf_pp["score"] == pytest.approx(
        sacrebleu.CHRF(word_order=2).corpus_score(preds, [refs]).score, abs=1e-9
    )
    assert no_network == []


def test_exact_match_known_values(no_network):
    refs = ["the cat", "theater", "YELLING", "agent007"]
    preds = ["cat?", "theater", "yelling", "agent"]
    em = load_metric("exact_match")
    assert em.compute(predictions=preds, references=refs)["exact_match"] == 0.25
    options = {"regexes_to_ignore": ["the ", "yell", "YELL"], "ignore_case": True, "ignore_punctuation": True}
    assert em.compute(predictions=preds, references=refs, **options)["exact_match"] == 0.75
    # The project's defaults compare answers: case, punctuation and spacing do not count.
    out = score(
        ["exact_match"],
        ["paris", "The  capital is Frostholt", "Rome"],
        ["Paris.", "the capital is frostholt!", "Paris"],
    )
    assert out["exact_match"].value == 2 / 3
    assert out["exact_match"].per_sample == (1.0, 1.0, 0.0)
    assert no_network == []


def test_unknown_metric_offline_is_a_config_error_naming_eval_metrics(no_network):
    with pytest.raises(ConfigError) as err:
        score(["rouge", "bertscore"], ["a"], ["a"])
    msg = str(err.value)
    assert "eval.metrics[1]" in msg and "'bertscore'" in msg and "HF_EVALUATE_OFFLINE" in msg
    assert all(name in msg for name in SHIPPED_METRICS)
    with pytest.raises(ConfigError, match="both report 'rouge1'"):
        score(["rouge", "rouge"], ["a"], ["a"], n_resamples=5)
    with pytest.raises(ConfigError, match=r"eval\.metrics\[0\]: metric '\./nowhere\.py': no metric script"):
        score(["./nowhere.py"], ["a"], ["a"])
    assert no_network == []


def test_unknown_metric_with_the_hub_unreachable_is_a_config_error(monkeypatch, tuneline_home):
    monkeypatch.delenv("HF_EVALUATE_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    import evaluate.config

    monkeypatch.setattr(evaluate.config, "HF_EVALUATE_OFFLINE", False)

    def refuse(*args, **kwargs):
        raise OSError("network access blocked by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    with pytest.raises(
        ConfigError, match=r"eval\.metrics: metric 'no_such_metric_xyz': not loadable from the hub"
    ):
        load_metric("no_such_metric_xyz")


def test_a_local_metric_script_scores_with_a_resampled_bootstrap(no_network, tmp_path):
    """A metric without sufficient statistics is recomputed on every resample (corpus-level is exact)."""
    script = tmp_path / "length_ratio" / "length_ratio.py"
    script.parent.mkdir()
    script.write_text(
        "import datasets\n"
        "import evaluate\n\n\n"
        "class LengthRatio(evaluate.Metric):\n"
        "    def _info(self):\n"
        "        return evaluate.MetricInfo(description='', citation='', features=datasets.Features(\n"
        "            {'predictions': datasets.Value('string'), 'references': datasets.Value('string')}))\n\n"
        "    def _compute(self, predictions, references):\n"
        "        return {'length_ratio': sum(map(len, predictions)) / sum(map(len, references))}\n"
    )
    preds, refs = _sentences(12, seed=3, length=5), _sentences(12, seed=4, length=6)
    out = score([str(script.parent)], preds, refs, n_resamples=50)
    result = out["length_ratio"]
    assert result.value == sum(map(len, preds)) / sum(map(len, refs))
    assert result.ci_low <= result.value <= result.ci_high and result.ci_low < result.ci_high
    assert result.per_sample is None
    assert no_network == []


def test_bootstrap_intervals_contain_the_estimate_and_are_reproducible(no_network):
    refs = _sentences(40, seed=5)
    preds = _edit_some(_sentences(40, seed=6)[:20] + refs[20:], every=3, seed=7)
    first = score(list(SHIPPED_METRICS), preds, refs)
    assert set(first) == {"rouge1", "rouge2", "rougeL", "rougeLsum", "sacrebleu", "chrf", "exact_match"}
    for key, r in first.items():
        assert r.ci_low <= r.value <= r.ci_high, key
        assert r.ci_low < r.ci_high, key
        assert len(r.per_sample) == 40
    assert score(list(SHIPPED_METRICS), preds, refs) == first
    other_seed = score(["rouge"], preds, refs, seed=1)
    assert other_seed["rougeL"].value == first["rougeL"].value
    assert (other_seed["rougeL"].ci_low, other_seed["rougeL"].ci_high) != (
        first["rougeL"].ci_low,
        first["rougeL"].ci_high,
    )


def test_bootstrap_intervals_shrink_with_more_samples(no_network):
    refs = _sentences(20, seed=8)
    preds = _edit_some(refs, every=2, seed=9)
    small = score(["exact_match", "sacrebleu"], preds, refs)
    large = score(["exact_match", "sacrebleu"], preds * 10, refs * 10)
    for key in ("exact_match", "sacrebleu"):
        assert large[key].value == pytest.approx(small[key].value, abs=1e-9)
        # sqrt(10) fewer: demand at least half.
        assert large[key].ci_high - large[key].ci_low < (small[key].ci_high - small[key].ci_low) / 2, key


def test_sacrebleu_resamples_are_corpus_bleu_of_the_resampled_sentences(no_network):
    import sacrebleu

    refs = _sentences(25, seed=10)
    preds = _edit_some(refs, every=2, seed=11)
    values, from_totals = load_metric("sacrebleu").sufficient_statistics(preds, refs)
    stats = SufficientStatistics(values, from_totals)
    sentence_mean = []
    for idx in resample_indices(len(preds), n_resamples=5, seed=0):
        resampled = sacrebleu.corpus_bleu([preds[i] for i in idx], [[refs[i] for i in idx]])
        assert stats(idx)["score"] == resampled.score
        sentence_mean.append(np.mean([stats(np.array([i]))["score"] for i in idx]))
    assert all(m != pytest.approx(stats(idx)["score"], abs=1e-6) for m in sentence_mean)


def test_paired_bootstrap_calls_a_clearly_better_system_significant(no_network):
    refs = _sentences(30, seed=12)
    base = _sentences(30, seed=13)
    tuned = _edit_some(refs, every=3, seed=14)
    better = compare_systems(list(SHIPPED_METRICS), base, tuned, refs)
    for key, c in better.items():
        assert c.delta == c.tuned.value - c.base.value, key
        assert c.delta > 0 and c.ci_low > 0, key
        assert c.significant and c.p_value < 0.05, key
        assert c.base == score([_name(key)], base, refs)[key]

    same = compare_systems(list(SHIPPED_METRICS), tuned, tuned, refs)
    for key, c in same.items():
        assert (c.delta, c.ci_low, c.ci_high) == (0.0, 0.0, 0.0), key
        assert c.p_value == 1.0 and not c.significant, key

    flat = flatten(better)
    assert {
        "base_rougeL",
        "finetuned_rougeL_ci_low",
        "delta_sacrebleu_p_value",
        "delta_chrf_significant",
    } <= set(flat)
    assert flat["delta_exact_match_significant"] == 1.0


def _name(key: str) -> str:
    return "rouge" if key.startswith("rouge") else key


def test_a_hub_metric_cached_by_an_earlier_online_run_loads_offline(no_network, tmp_path):
    from evaluate.loading import DownloadMode, _create_importable_file

    from tuneline.evaluate.scoring import _modules_path

    script = tmp_path / "char_count.py"
    script.write_text(
        "import datasets\n"
        "import evaluate\n\n\n"
        "class CharCount(evaluate.Metric):\n"
        "    def _info(self):\n"
        "        return evaluate.MetricInfo(description='', citation='', features=datasets.Features(\n"
        "            {'predictions': datasets.Value('string'), 'references': datasets.Value('string')}))\n\n"
        "    def _compute(self, predictions, references):\n"
        "        return sum(map(len, predictions))\n"
    )
    # What evaluate leaves behind after downloading `evaluate-metric/char_count` from the hub.
    _create_importable_file(
        str(script),
        [],
        [],
        _modules_path(),
        "metrics",
        "evaluate-metric/char_count",
        DownloadMode.REUSE_DATASET_IF_EXISTS,
    )
    out = score(["char_count"], ["abc", "de"], ["x", "y"], n_resamples=20)
    assert out["char_count"].value == 5.0
    assert no_network == []


def test_paired_bootstrap_of_per_sample_scores_has_the_direction_of_the_metric():
    """Per-sample scores the caller already has (preference accuracy, a loss) bootstrap without evaluate."""
    base = mean_statistics({"accuracy": [1.0, 0.0] * 20, "loss": [2.0, 3.0] * 20})
    tuned = mean_statistics({"accuracy": [1.0] * 40, "loss": [1.0, 2.0] * 20})
    deltas = paired_bootstrap(base, tuned, 40, greater_is_better=lambda k: k != "loss")
    assert deltas["accuracy"].delta == 0.5 and deltas["accuracy"].significant
    assert deltas["loss"].delta == -1.0 and deltas["loss"].significant
    assert deltas["loss"].ci_low == pytest.approx(-1.0, abs=1e-12)  # every resample: -1 up to rounding
    assert deltas["loss"].ci_high == pytest.approx(-1.0, abs=1e-12)
    worse = paired_bootstrap(tuned, base, 40, greater_is_better=lambda k: k != "loss")
    assert not worse["accuracy"].significant and worse["accuracy"].p_value == 1.0
    with pytest.raises(ValueError, match="differ in length"):
        mean_statistics({"a": [1.0], "b": [1.0, 2.0]})
