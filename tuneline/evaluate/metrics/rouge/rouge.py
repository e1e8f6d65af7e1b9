"""ROUGE-1/2/L/Lsum F-measure through Google's `rouge_score`, as an `evaluate` metric loaded by path.

Same arguments and output keys as the hub's `rouge` module, so `evaluate` users meet no
surprise, with one deliberate difference: the aggregate is the plain mean of per-sample
F-measures. The hub module reports the median of rouge_score's unseeded bootstrap, which
moves from run to run and cannot be compared across a base and a fine-tuned model.
`sufficient_statistics` hands the per-sample scores to tuneline's seeded bootstrap.

rouge_score's default tokenizer keeps only [a-z0-9] after lowercasing: accented letters
split words and scripts without Latin letters score 0. Pass `tokenizer` (a callable
text -> list of tokens) for such text.
"""

import datasets
import evaluate
import numpy as np
from rouge_score import rouge_scorer

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")

_DESCRIPTION = "ROUGE F-measure (rouge_score), mean over samples; per-sample scores for bootstrap intervals."

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of generated texts.
    references: list of reference texts, or a list of lists (the best-scoring reference counts).
    rouge_types: subset of rouge1, rouge2 (any rougeN), rougeL, rougeLsum (sentences split on newlines).
    use_stemmer: Porter-stem words before matching.
    use_aggregator: True: the mean over samples; False: one score per sample, per type.
    tokenizer: optional callable text -> tokens replacing rouge_score's ASCII-only tokenizer.
    per_sample: also return {"per_sample": {type: [score per sample]}}.
Returns:
    rouge1, rouge2, rougeL, rougeLsum: F-measure in [0, 1].
"""


class _Tokenizer:
    """rouge_score wants an object with .tokenize(); users pass a plain callable."""

    def __init__(self, fn):
        self.fn = fn

    def tokenize(self, text):
        return self.fn(text)


class Rouge(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="Lin, Chin-Yew. ROUGE: A Package for Automatic Evaluation of Summaries. ACL 2004.",
            inputs_description=_KWARGS_DESCRIPTION,
            features=[
                datasets.Features(
                    {
                        "predictions": datasets.Value("string", id="sequence"),
                        "references": datasets.Sequence(datasets.Value("string", id="sequence")),
                    }
                ),
                datasets.Features(
                    {
                        "predictions": datasets.Value("string", id="sequence"),
                        "references": datasets.Value("string", id="sequence"),
                    }
                ),
            ],
            codebase_urls=["https://github.com/google-research/google-research/tree/master/rouge"],
        )

    def sufficient_statistics(
        self, predictions, references, rouge_types=None, use_stemmer=False, tokenizer=None
    ):
        """(per-sample F-measures, one column per type; totals -> mean per type)."""
        types = list(rouge_types or ROUGE_TYPES)
        scorer = rouge_scorer.RougeScorer(
            types, use_stemmer=use_stemmer, tokenizer=_Tokenizer(tokenizer) if tokenizer else None
        )
        rows = []
        for prediction, reference in zip(predictions, references, strict=True):
            if isinstance(reference, str):
                scores = scorer.score(reference, prediction)
            else:
                scores = scorer.score_multi(list(reference), prediction)
            rows.append([scores[t].fmeasure for t in types])
        values = np.asarray(rows, dtype=np.float64).reshape(len(rows), len(types))

        def from_totals(totals, n):
            return {t: float(totals[j] / n) for j, t in enumerate(types)}

        return values, from_totals

    def _compute(
        self,
        predictions,
        references,
        rouge_types=None,
        use_aggregator=True,
        use_stemmer=False,
        tokenizer=None,
        per_sample=False,
    ):
        values, from_totals = self.sufficient_statistics(
            predictions, references, rouge_types=rouge_types, use_stemmer=use_stemmer, tokenizer=tokenizer
        )
        types = list(rouge_types or ROUGE_TYPES)
        by_sample = {t: values[:, j].tolist() for j, t in enumerate(types)}
        if not use_aggregator:
            return by_sample
        out = from_totals(values.sum(axis=0), len(values))
        if per_sample:
            out["per_sample"] = by_sample
        return out
