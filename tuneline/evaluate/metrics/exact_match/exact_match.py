"""Exact match rate, as an `evaluate` metric loaded by path.

Same arguments, semantics and output key as the hub's `exact_match` module (normalisation
off by default; when normalisation empties both texts they match only if the originals
were identical), plus `collapse_whitespace`, so "Paris ." and "Paris." can match once
punctuation is ignored. `sufficient_statistics` hands the 0/1 per-sample matches to
tuneline's bootstrap.
"""

import re
import string

import datasets
import evaluate
import numpy as np

_DESCRIPTION = "Share of predictions equal to their reference after optional normalisation."

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of generated texts.
    references: list of reference texts.
    regexes_to_ignore: regexes removed from both texts first.
    ignore_case: lowercase both texts.
    ignore_punctuation: remove ASCII punctuation.
    ignore_numbers: remove digits.
    collapse_whitespace: strip and turn every whitespace run into one space (applied last).
    per_sample: also return {"per_sample": {"exact_match": [0.0 or 1.0 per sample]}}.
Returns:
    exact_match: in [0, 1].
"""

_NO_PUNCT = str.maketrans("", "", string.punctuation)
_NO_DIGITS = str.maketrans("", "", string.digits)


def _normalize(text, regexes_to_ignore, ignore_case, ignore_punctuation, ignore_numbers, collapse_whitespace):
    for pattern in regexes_to_ignore or ():
        text = re.sub(pattern, "", text)
    if ignore_case:
        text = text.lower()
    if ignore_punctuation:
        text = text.translate(_NO_PUNCT)
    if ignore_numbers:
        text = text.translate(_NO_DIGITS)
    if collapse_whitespace:
        text = " ".join(text.split())
    return text


class ExactMatch(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("string", id="sequence"),
                    "references": datasets.Value("string", id="sequence"),
                }
            ),
        )

    def sufficient_statistics(
        self,
        predictions,
        references,
        regexes_to_ignore=None,
        ignore_case=False,
        ignore_punctuation=False,
        ignore_numbers=False,
        collapse_whitespace=False,
    ):
        """(per-sample 0/1 match; totals -> match rate)."""
        options = (regexes_to_ignore, ignore_case, ignore_punctuation, ignore_numbers, collapse_whitespace)
        rows = []
        for prediction, reference in zip(predictions, references, strict=True):
            p, r = _normalize(prediction, *options), _normalize(reference, *options)
            rows.append(int(p == r and (p != "" or prediction == reference)))
        values = np.asarray(rows, dtype=np.int64).reshape(len(rows), 1)

        def from_totals(totals, n):
            return {"exact_match": float(totals[0] / n)}

        return values, from_totals

    def _compute(
        self,
        predictions,
        references,
        regexes_to_ignore=None,
        ignore_case=False,
        ignore_punctuation=False,
        ignore_numbers=False,
        collapse_whitespace=False,
        per_sample=False,
    ):
        values, from_totals = self.sufficient_statistics(
            predictions,
            references,
            regexes_to_ignore=regexes_to_ignore,
            ignore_case=ignore_case,
            ignore_punctuation=ignore_punctuation,
            ignore_numbers=ignore_numbers,
            collapse_whitespace=collapse_whitespace,
        )
        out = from_totals(values.sum(axis=0), len(values))
        if per_sample:
            out["per_sample"] = {"exact_match": values[:, 0].astype(np.float64).tolist()}
        return out
