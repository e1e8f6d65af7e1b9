"""Tool-call accuracy, as an `evaluate` metric loaded by path.

References are the calls of a held-out assistant turn as a JSON list (what tuneline's
evaluation writes for records with tools); predictions are generated text, parsed in the
chat template's call format (`format`: auto, hermes, llama3_json, mistral). Each rate is
over the samples whose reference is a call: `tool_call_parse_rate` (the answer makes a call
that parses), `tool_name_accuracy` (it calls the right functions) and `tool_call_accuracy`
(the right functions with JSON-equal arguments). `sufficient_statistics` hands the 0/1 rows to
tuneline's bootstrap.
"""

import datasets
import evaluate
import numpy as np

from tuneline.evaluate.tool_calls import judge_call

_DESCRIPTION = "Share of tool-call turns whose generated call parses, names the right function, and has the right arguments."

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of generated texts.
    references: list of reference calls as JSON lists of {"name", "arguments"} (other references are not counted).
    format: how the template writes calls: auto (by marker), hermes, llama3_json, mistral.
Returns:
    tool_call_parse_rate, tool_name_accuracy, tool_call_accuracy: in [0, 1].
"""

KEYS = ("tool_call_parse_rate", "tool_name_accuracy", "tool_call_accuracy")


class ToolCall(evaluate.Metric):
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

    def sufficient_statistics(self, predictions, references, format="auto"):
        """(per-sample [is a call turn, parses, right names, right call]; totals -> rates over call turns)."""
        rows = [judge_call(p, r, format) for p, r in zip(predictions, references, strict=True)]
        values = np.asarray(rows, dtype=np.int64).reshape(len(rows), 4)

        def from_totals(totals, n):
            turns = totals[0]
            return {k: float(totals[i + 1] / turns) if turns else 0.0 for i, k in enumerate(KEYS)}

        return values, from_totals

    def _compute(self, predictions, references, format="auto"):
        values, from_totals = self.sufficient_statistics(predictions, references, format=format)
        return from_totals(values.sum(axis=0), len(values))
