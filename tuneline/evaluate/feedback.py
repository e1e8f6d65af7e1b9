"""Scoring a KTO-tuned model on held-out labelled answers.

KTO's implicit reward of an answer is r = log pi(y|x) - log pi_ref(y|x): how much more likely
the tuned model makes it than the model training started from. A model that learned the
feedback ranks desirable answers above undesirable ones, so:

- `kto_reward_auc` (the default promotion metric): the share of (desirable, undesirable)
  answer pairs in which the desirable one has the higher reward (ties count one half), i.e.
  the ROC AUC of the reward as a desirability score. It depends only on the ranking, so
  content both kinds of answer share (the facts in the demo) cannot move it: in the measured
  demo every reward rose (the tuned model also learned the shared facts), sign agreement
  stayed near 0.5 and the AUC went from 0.5 to 0.95.
- `kto_label_accuracy`: the share of answers whose reward sign matches the label (r > 0
  desirable, r < 0 undesirable; a tie counts one half);
- `kto_reward_margin`: mean reward of desirable answers minus that of undesirable ones, in nats.

The start model is the reference, so its every reward is exactly 0: AUC and accuracy 0.5,
margin 0. Per sample, the AUC is the share of the other label's answers an answer is ranked
correctly against, the margin the signed reward (+r desirable, -r undesirable); every
bootstrap resample recomputes the set-level values from its own answers.

Raw log-probabilities of unpaired answers are not compared with each other: answers differ in
length and content, and a longer answer is less likely whatever its label.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tuneline.config import ProjectConfig
from tuneline.data.records import Record

log = logging.getLogger("tuneline")

KEYS = ("kto_reward_auc", "kto_label_accuracy", "kto_reward_margin")


@dataclass
class FeedbackScores:
    """Per labelled answer: the texts as scored, the label, and the model's and reference's log-probs."""

    prompts: list[str] = field(default_factory=list)
    questions: list[str] = field(default_factory=list)
    completions: list[str] = field(default_factory=list)
    labels: list[bool] = field(default_factory=list)
    logps: list[float] = field(default_factory=list)
    ref_logps: list[float] = field(default_factory=list)

    @property
    def rewards(self) -> list[float]:
        return [a - b for a, b in zip(self.logps, self.ref_logps, strict=True)]


def feedback_rows(cfg: ProjectConfig, tokenizer: Any, records: list[Record]) -> list[dict[str, Any]]:
    """The eval answers as the ids KTO training uses."""
    from tuneline.tokenize import preference_tokenize_config
    from tuneline.tokenize.feedback import tokenize_feedback_split

    labelled = [r for r in records if r.kind == "preference" and (r.chosen or r.rejected)]
    return list(tokenize_feedback_split(labelled, tokenizer, preference_tokenize_config(cfg)))


def completion_logps(model: Any, rows: list[dict[str, Any]]) -> list[float]:
    """Summed log-prob of each row's completion given its prompt."""
    from tuneline.evaluate.generate import _completion_logprob

    model.eval()
    out = []
    for row in rows:
        if not row["prompt_ids"]:
            raise ValueError("a KTO prompt tokenized to nothing; cannot score its answer")
        out.append(_completion_logprob(model, row["prompt_ids"], row["completion_ids"]))
    return out


def score_rows(
    tokenizer: Any, rows: list[dict[str, Any]], logps: list[float], ref_logps: list[float]
) -> FeedbackScores:
    return FeedbackScores(
        prompts=[tokenizer.decode(r["prompt_ids"]) for r in rows],
        questions=[str(r.get("question", "")) for r in rows],
        completions=[tokenizer.decode(r["completion_ids"]) for r in rows],
        labels=[bool(r["label"]) for r in rows],
        logps=list(logps),
        ref_logps=list(ref_logps),
    )


class FeedbackStatistics:
    """The KTO scores of any subset of the answers (a bootstrap resample, one answer), computed
    from that subset's own rewards and labels; duck-types `SufficientStatistics` for the
    bootstrap (`n`, called on indices, `per_sample`)."""

    def __init__(self, rewards: list[float], labels: list[bool]):
        self.r = np.asarray(rewards, dtype=np.float64)
        self.d = np.asarray(labels, dtype=bool)

    @property
    def n(self) -> int:
        return int(self.r.shape[0])

    def __call__(self, idx: np.ndarray) -> dict[str, float]:
        r, d = self.r[idx], self.d[idx]
        good, bad = r[d], r[~d]
        agree = np.where(r == 0, 0.5, (r > 0) == d).astype(np.float64)
        return {
            KEYS[0]: auc(good, bad),
            KEYS[1]: float(agree.mean()) if len(r) else 0.5,
            KEYS[2]: float((good.mean() if len(good) else 0.0) - (bad.mean() if len(bad) else 0.0)),
        }

    def per_sample(self) -> list[dict[str, float]]:
        good, bad = self.r[self.d], self.r[~self.d]
        out = []
        for r, d in zip(self.r, self.d, strict=True):
            beaten = auc(np.asarray([r]), bad) if d else auc(good, np.asarray([r]))
            agree = 0.5 if r == 0 else float((r > 0) == d)
            out.append({KEYS[0]: beaten, KEYS[1]: agree, KEYS[2]: float(r if d else -r)})
        return out


def auc(good: np.ndarray, bad: np.ndarray) -> float:
    """P(a desirable reward > an undesirable one), ties one half; 0.5 when a side is empty."""
    if not len(good) or not len(bad):
        return 0.5
    diff = good[:, None] - bad[None, :]
    return float(((diff > 0) + 0.5 * (diff == 0)).mean())


def feedback_statistics(scores: FeedbackScores) -> FeedbackStatistics:
    return FeedbackStatistics(scores.rewards, scores.labels)


def texts(base: Any, tuned: Any) -> list[dict[str, Any]]:
    """What a person reads per sample: the prompt, the answer and its label."""
    f = tuned.feedback
    return [
        {
            "question": f.questions[i] if i < len(f.questions) else "",
            "prompt": f.prompts[i],
            "completion": f.completions[i],
            "label": "desirable" if f.labels[i] else "undesirable",
        }
        for i in range(len(f.prompts))
    ]


def evaluate_feedback(
    cfg: ProjectConfig,
    model_dir: str,
    tokenizer: Any,
    records: list[Record],
    *,
    data_fingerprint: str,
    client: Any = None,
) -> tuple[dict[str, Any], dict[str, float]]:
    """(report, flat MLflow metrics) for a KTO-tuned model; rewards are measured against the start
    model (the KTO reference), the base every other model here is compared with too."""
    from tuneline.evaluate.generate import load_start_model, load_trained_model
    from tuneline.evaluate.judge import SystemOutput, _champion_tokenizer, _evaluate

    rows = feedback_rows(cfg, tokenizer, records)
    reference: list[list[float]] = []
    if not cfg.eval.compare_base:
        start = load_start_model(cfg, len(tokenizer))
        reference.append(completion_logps(start, rows))
        del start

    def run(model: Any, tok: Any) -> SystemOutput:
        logps = completion_logps(model, rows)
        if not reference:
            # With compare_base, `_evaluate` runs the start model first: its log-probs are the reference.
            reference.append(logps)
        return SystemOutput(feedback=score_rows(tokenizer, rows, logps, reference[0]))

    def rescore(local: str) -> SystemOutput:
        tok, same = _champion_tokenizer(local, tokenizer)
        if not same:
            log.warning("kto: the champion's tokenizer differs; it is scored on this model's token ids")
        return run(load_trained_model(cfg, local, len(tok)), tokenizer)

    return _evaluate(cfg, data_fingerprint, run, model_dir, tokenizer, client, rescore)
