"""chrF / chrF++ through the `sacrebleu` package, as an `evaluate` metric loaded by path.

Same arguments and output keys as the hub's `chrf` module. Character n-grams make it far
less sensitive to tokenisation and morphology than BLEU or ROUGE, which suits short LLM
answers and non-English text. Like BLEU it is a corpus metric (n-gram counts are summed
before the F-score), so `sufficient_statistics` returns per-sentence counts and a
bootstrap resample recomputes the corpus score from their sum.
"""

import datasets
import evaluate
import numpy as np
from sacrebleu.metrics import CHRF

_DESCRIPTION = "sacreBLEU chrF corpus score (0-100); per-sentence n-gram counts for bootstrap intervals."

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of generated texts.
    references: list of reference texts, or a list of lists with the same number of references each.
    char_order: character n-gram order (6).
    word_order: word n-gram order (0 = chrF, 2 = chrF++).
    beta: weight of recall over precision (2).
    lowercase: lowercase before matching.
    whitespace: keep whitespace in character n-grams.
    eps_smoothing: chrF++.py / Moses / NLTK style smoothing instead of sacrebleu's effective order.
    per_sample: also return {"per_sample": {"score": [chrF of each sentence alone]}}.
Returns:
    score, char_order, word_order, beta.
"""


def _reference_streams(references):
    """Per-prediction references -> sacrebleu's layout: one stream per reference position."""
    refs = [[r] if isinstance(r, str) else list(r) for r in references]
    width = len(refs[0]) if refs else 1
    if any(len(r) != width for r in refs):
        raise ValueError("chrF (sacrebleu) needs the same number of references for every prediction")
    return [[r[i] for r in refs] for i in range(width)]


class Chrf(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="Popović, Maja. chrF: character n-gram F-score for automatic MT evaluation. WMT 2015.",
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
            codebase_urls=["https://github.com/mjpost/sacreBLEU#chrf--chrf"],
        )

    def sufficient_statistics(
        self,
        predictions,
        references,
        char_order=CHRF.CHAR_ORDER,
        word_order=CHRF.WORD_ORDER,
        beta=CHRF.BETA,
        lowercase=False,
        whitespace=False,
        eps_smoothing=False,
    ):
        """(per-sentence [hyp, ref, match] counts per n-gram order; totals -> corpus chrF)."""
        chrf = CHRF(char_order, word_order, beta, lowercase, whitespace, eps_smoothing)
        predictions = list(predictions)
        width = 3 * (char_order + word_order)
        rows = (
            chrf._extract_corpus_statistics(predictions, _reference_streams(references))
            if predictions
            else []
        )
        values = np.asarray(rows, dtype=np.int64).reshape(len(rows), width)

        def from_totals(totals, n):
            s = chrf._compute_score_from_stats([int(x) for x in totals])
            return {"score": s.score, "char_order": s.char_order, "word_order": s.word_order, "beta": s.beta}

        return values, from_totals

    def _compute(
        self,
        predictions,
        references,
        char_order=CHRF.CHAR_ORDER,
        word_order=CHRF.WORD_ORDER,
        beta=CHRF.BETA,
        lowercase=False,
        whitespace=False,
        eps_smoothing=False,
        per_sample=False,
    ):
        values, from_totals = self.sufficient_statistics(
            predictions,
            references,
            char_order=char_order,
            word_order=word_order,
            beta=beta,
            lowercase=lowercase,
            whitespace=whitespace,
            eps_smoothing=eps_smoothing,
        )
        out = from_totals(values.sum(axis=0), len(values))
        if per_sample:
            out["per_sample"] = {"score": [from_totals(row, 1)["score"] for row in values]}
        return out
