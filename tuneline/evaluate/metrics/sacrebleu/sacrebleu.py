"""Corpus BLEU through the `sacrebleu` package, as an `evaluate` metric loaded by path.

Same arguments and output keys as the hub's `sacrebleu` module. BLEU is a corpus metric:
n-gram matches and lengths are summed over all sentences before the geometric mean and
brevity penalty, so the mean of sentence BLEU is a different (and noisier) number.
`sufficient_statistics` returns those per-sentence counts; a bootstrap resample sums them
and applies sacrebleu's own formula, which gives exactly `corpus_bleu` of the resampled
sentences at the cost of one sum.
"""

import datasets
import evaluate
import numpy as np
from sacrebleu.metrics import BLEU

_DESCRIPTION = "sacreBLEU corpus score (0-100); per-sentence sufficient statistics for bootstrap intervals."

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of generated texts (detokenized).
    references: list of reference texts, or a list of lists with the same number of references each.
    smooth_method: 'exp' (default), 'floor', 'add-k' or 'none'.
    smooth_value: value for 'floor' / 'add-k'; None takes sacrebleu's default.
    force: do not warn about input that looks tokenized.
    lowercase: lowercase before matching.
    tokenize: sacrebleu tokenizer name ('13a' by default, 'zh', 'intl', 'char', 'none', ...).
    use_effective_order: ignore n-gram orders without any match.
    per_sample: also return {"per_sample": {"score": [BLEU of each sentence alone, same settings]}}.
Returns:
    score, counts, totals, precisions, bp, sys_len, ref_len (as sacrebleu's BLEUScore).
"""


def _reference_streams(references):
    """Per-prediction references -> sacrebleu's layout: one stream per reference position."""
    refs = [[r] if isinstance(r, str) else list(r) for r in references]
    width = len(refs[0]) if refs else 1
    if any(len(r) != width for r in refs):
        raise ValueError("sacreBLEU needs the same number of references for every prediction")
    return [[r[i] for r in refs] for i in range(width)]


class Sacrebleu(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="Post, Matt. A Call for Clarity in Reporting BLEU Scores. WMT 2018.",
            inputs_description=_KWARGS_DESCRIPTION,
            features=[
                datasets.Features(
                    {
                        "predictions": datasets.Value("string", id="sequence"),
                        "references": datasets.Sequence(
                            datasets.Value("string", id="sequence"), id="references"
                        ),
                    }
                ),
                datasets.Features(
                    {
                        "predictions": datasets.Value("string", id="sequence"),
                        "references": datasets.Value("string", id="sequence"),
                    }
                ),
            ],
            codebase_urls=["https://github.com/mjpost/sacreBLEU"],
        )

    def sufficient_statistics(
        self,
        predictions,
        references,
        smooth_method="exp",
        smooth_value=None,
        force=False,
        lowercase=False,
        tokenize=None,
        use_effective_order=False,
    ):
        """(per-sentence [sys_len, ref_len, matches 1-4, totals 1-4]; totals -> corpus BLEU)."""
        bleu = BLEU(
            lowercase=lowercase,
            force=force,
            tokenize=tokenize,
            smooth_method=smooth_method,
            smooth_value=smooth_value,
            effective_order=use_effective_order,
        )
        predictions = list(predictions)
        width = 2 + 2 * bleu.max_ngram_order
        rows = (
            bleu._extract_corpus_statistics(predictions, _reference_streams(references))
            if predictions
            else []
        )
        values = np.asarray(rows, dtype=np.int64).reshape(len(rows), width)

        def from_totals(totals, n):
            # sacrebleu's add-k smoothing edits the lists it gets, so hand it fresh ints.
            s = bleu._compute_score_from_stats([int(x) for x in totals])
            return {
                "score": s.score,
                "counts": s.counts,
                "totals": s.totals,
                "precisions": s.precisions,
                "bp": s.bp,
                "sys_len": s.sys_len,
                "ref_len": s.ref_len,
            }

        return values, from_totals

    def _compute(
        self,
        predictions,
        references,
        smooth_method="exp",
        smooth_value=None,
        force=False,
        lowercase=False,
        tokenize=None,
        use_effective_order=False,
        per_sample=False,
    ):
        values, from_totals = self.sufficient_statistics(
            predictions,
            references,
            smooth_method=smooth_method,
            smooth_value=smooth_value,
            force=force,
            lowercase=lowercase,
            tokenize=tokenize,
            use_effective_order=use_effective_order,
        )
        out = from_totals(values.sum(axis=0), len(values))
        if per_sample:
            out["per_sample"] = {"score": [from_totals(row, 1)["score"] for row in values]}
        return out
