"""Labelled answers (KTO) tokenized exactly as SFT and DPO tokenize a conversation.

Each desirable (`chosen`) or undesirable (`rejected`) answer of a preference record is one
example: prompt ids, completion ids and the label. A DPO pair gives two examples, as TRL's
`unpair_preference_dataset` would. Rendering and encoding are the DPO path's (one BOS iff the
model expects it, escaped special-token strings, the answer ending with its end-of-turn
token), so TRL receives ids and tokenizes nothing.

TRL 1.16's KTOTrainer always tokenizes in `_prepare_dataset`; `PretokenizedFeedback` passes
these rows through and adds what that method would have added to them: the KL
completions, each example's answer swapped with its batch neighbour's.
"""

from __future__ import annotations

from typing import Any

from tuneline.config.template import TokenizeConfig
from tuneline.data.records import Record
from tuneline.errors import DataError, Problem
from tuneline.tokenize.encode import Encoder, truncate
from tuneline.tokenize.render import Rendered, where, with_system

KTO_COLUMNS = ("prompt_ids", "completion_ids", "label")


class FeedbackRows(list):
    """Rows {prompt_ids, completion_ids, label, meta, question} plus the split's tokenization stats."""

    stats: dict[str, Any]


def answers(rec: Record) -> list[tuple[list[dict[str, Any]], bool]]:
    """(answer turns, desirable) for each side a record has."""
    return [(side, good) for side, good in ((rec.chosen, True), (rec.rejected, False)) if side]


def tokenize_feedback_split(
    records: list[Record], tokenizer: Any, cfg: TokenizeConfig, *, system_prompt: str | None = None
) -> FeedbackRows:
    """One row per labelled answer; answers longer than `cfg.max_length` follow `cfg.overflow`
    (truncation cuts the answer and re-attaches its end-of-turn token; an answer with no room
    left after its prompt is dropped and counted)."""
    enc = Encoder(tokenizer, cfg)
    renderer = enc.renderer
    rendered: list[Rendered] = []
    labels: list[bool] = []
    questions: list[str] = []  # per record: its last user turn, what a person recognises it by
    for idx, rec in enumerate(records):
        sides = answers(rec) if rec.kind == "preference" else []
        if not sides:
            raise DataError(
                [Problem(where(rec.meta), "expected a labelled answer (prompt + chosen or rejected)")]
            )
        prompt = renderer.prepare(with_system(rec.messages, system_prompt))
        questions.append(next((m["content"] for m in reversed(rec.messages) if m["role"] == "user"), ""))
        for side, good in sides:
            text, spans, msgs = renderer.chat_spans(
                prompt + list(side), rec.meta, prepared=True, from_turn=len(prompt)
            )
            if not spans:
                raise _not_prefix(rec.meta)
            span = [(spans[0][0], spans[-1][1], spans[-1][2])]
            escape = enc.escape and renderer.has_special_literal(msgs)
            content = renderer.content_regions(text, msgs) if escape else None
            rendered.append(Rendered(text, span, content, "pair", rec.meta, idx))
            labels.append(good)

    L = cfg.max_length
    rows = FeedbackRows()
    problems: list[Problem] = []
    stats = enc.stats
    for r, e, good in zip(rendered, enc.encode(rendered), labels, strict=True):
        if not e.spans:
            raise _not_prefix(r.meta)
        a, b, t = e.spans[0]
        ids = e.ids[:b]
        if len(ids) > L:
            if cfg.overflow == "drop":
                stats["dropped_too_long"] += 1
                continue
            if cfg.overflow == "error":
                problems.append(
                    Problem(
                        where(r.meta),
                        f"{len(ids)} tokens > tokenize.max_length {L} "
                        "(set tokenize.overflow: truncate|drop or raise max_length)",
                    )
                )
                continue
            ids, sup = truncate(ids, [(a, len(ids), t)], [(a, len(ids))], L, False)
            if not sup:
                stats["dropped_no_supervised"] += 1
                continue
            stats["truncated"] += 1
        rows.append({"prompt_ids": ids[:a], "completion_ids": ids[a:], "label": good, "meta": r.meta})
        rows[-1]["question"] = questions[r.index]
    if problems:
        raise DataError(problems, header=f"{len(problems)} answer(s) exceed tokenize.max_length {L}")
    rows.stats = {
        "n_in": len(rendered),
        "n_out": len(rows),
        "desirable": sum(1 for row in rows if row["label"]),
        "undesirable": sum(1 for row in rows if not row["label"]),
        **{
            key: stats[key]
            for key in (
                "dropped_too_long",
                "truncated",
                "dropped_no_supervised",
                "special_tokens_escaped",
                "system_merged",
                "double_bos_removed",
            )
        },
    }
    return rows


def _not_prefix(meta: dict[str, Any]) -> DataError:
    return DataError(
        [
            Problem(
                where(meta),
                "chat template is not prefix-stable for this answer (the prompt's rendering changes once "
                "an answer follows); use another template",
            )
        ]
    )


def feedback_dataset(rows: list[dict[str, Any]]) -> Any:
    """The `datasets.Dataset` to hand TRL's KTOTrainer."""
    from datasets import Dataset

    data = [{c: r[c] for c in KTO_COLUMNS} for r in rows]
    if not data:
        return Dataset.from_dict({c: [] for c in KTO_COLUMNS})
    return Dataset.from_list(data)


def with_kl_completions(dataset: Any, batch_size: int) -> Any:
    """KTO's KL reference point: within each batch of `batch_size` consecutive examples, every
    prompt is paired with its neighbour's answer, (x1, yn), (x2, y1), ..., as TRL 1.16 does.
    The trainer's sequential sampler keeps those batches together."""

    def rotate(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        c = batch["completion_ids"]
        batch["KL_completion_ids"] = c[-1:] + c[:-1]
        return batch

    return dataset.map(rotate, batched=True, batch_size=batch_size)


class PretokenizedFeedback:
    """Mix into TRL's KTOTrainer, before it in the bases: rows from `feedback_dataset` keep their
    ids (prompts that fill max_length are dropped, KL completions added, as TRL would);
    anything else TRL tokenizes as usual."""

    def _prepare_dataset(self, dataset: Any, processing_class: Any, args: Any, dataset_name: str) -> Any:
        columns = set(getattr(dataset, "column_names", None) or next(iter(dataset)).keys())
        if not set(KTO_COLUMNS) <= columns:
            return super()._prepare_dataset(dataset, processing_class, args, dataset_name)  # type: ignore[misc]
        if args.max_length is not None:
            dataset = dataset.filter(lambda ex: len(ex["prompt_ids"]) < args.max_length)
        if self.calculate_KL:  # type: ignore[attr-defined]
            dataset = with_kl_completions(dataset, args.per_device_train_batch_size)
        return dataset


def feedback_preview(cfg: Any, records: list[Record], tokenizer: Any, *, as_json: bool = False) -> list[str]:
    """Labelled answers as KTOTrainer receives them: `--preview` for train.method kto."""
    import json

    from tuneline.tokenize.preference import preference_tokenize_config
    from tuneline.tokenize.preview import CLOSE, OPEN, _decode

    rows = tokenize_feedback_split(records, tokenizer, preference_tokenize_config(cfg))
    if as_json:
        return [
            json.dumps(
                {
                    "prompt": _decode(tokenizer, r["prompt_ids"]),
                    "completion": _decode(tokenizer, r["completion_ids"]),
                    "label": r["label"],
                    "prompt_ids": list(r["prompt_ids"]),
                    "completion_ids": list(r["completion_ids"]),
                },
                ensure_ascii=False,
            )
            for r in rows
        ]
    blocks = [
        f"── answer {i} ({'desirable' if r['label'] else 'undesirable'}): prompt {len(r['prompt_ids'])} tokens, "
        f"completion {len(r['completion_ids'])}\n{_decode(tokenizer, r['prompt_ids'])}\n"
        f"{OPEN}{_decode(tokenizer, r['completion_ids'])}{CLOSE}"
        for i, r in enumerate(rows)
    ]
    legend = f"(the answers the KTO loss scores are shown as {OPEN}...{CLOSE})"
    return ["\n\n".join([legend, *blocks]) + "\n"]
