"""Preference pairs (DPO / ORPO) tokenized exactly as SFT tokenizes a conversation.

Handing TRL the raw messages lets it tokenize on its own terms: TRL 1.16's DPOTrainer
encodes `apply_chat_template` output with `add_special_tokens=False` (no BOS for a
template that does not write one, e.g. Zephyr on Llama-2) and turns special-token
strings typed in user text into control tokens; ORPOTrainer always prepends BOS and
appends EOS. Here every pair goes through the same renderer and encoder as SFT (one
BOS iff the model expects it, escaped special-token strings, system folding, the
completion ending with its end-of-turn token), and the trainers receive ids.

Neither trainer skips its own tokenization for pre-tokenized rows (DPOTrainer's
`_prepare_dataset` and ORPOTrainer's `tokenize_row` always run), so the trainer class
mixes in `PretokenizedPreferences`, which passes such rows through untouched.
"""

from __future__ import annotations

from typing import Any

from tuneline.config.template import TokenizeConfig
from tuneline.data.records import Record
from tuneline.errors import DataError, Problem
from tuneline.tokenize.encode import Encoder, truncate
from tuneline.tokenize.render import Rendered, where, with_system
from tuneline.tokenize.tokenized import IGNORE_INDEX

# What DPOTrainer's DataCollatorForPreference consumes, and what ORPOTrainer's tokenize_row produces.
DPO_COLUMNS = ("prompt_ids", "chosen_ids", "rejected_ids")
ORPO_COLUMNS = (
    "prompt_input_ids",
    "prompt_attention_mask",
    "chosen_input_ids",
    "chosen_attention_mask",
    "chosen_labels",
    "rejected_input_ids",
    "rejected_attention_mask",
    "rejected_labels",
)


class PreferenceRows(list):
    """Rows {prompt_ids, chosen_ids, rejected_ids} plus the split's tokenization stats."""

    stats: dict[str, Any]


def _not_prefix(meta: dict[str, Any]) -> DataError:
    return DataError(
        [
            Problem(
                where(meta),
                "chat template is not prefix-stable for this pair (the prompt's rendering changes once "
                "an answer follows); use another template",
            )
        ]
    )


def tokenize_preference_split(
    records: list[Record], tokenizer: Any, cfg: TokenizeConfig, *, system_prompt: str | None = None
) -> PreferenceRows:
    """Each pair as prompt / chosen / rejected token ids, rendered and encoded exactly as SFT would.

    The prompt is everything SFT would see before the first answer turn (the generation
    prompt, for prefix-stable templates); the completion runs from there through the
    end-of-turn token(s) of its last assistant turn. Pairs longer than `cfg.max_length` follow
    `cfg.overflow`; truncation cuts the completion and re-attaches its end-of-turn,
    and a pair whose prompt leaves no room for an answer is dropped (counted).
    """
    enc = Encoder(tokenizer, cfg)
    renderer = enc.renderer
    rendered: list[Rendered] = []
    for idx, rec in enumerate(records):
        if rec.kind != "preference" or not rec.chosen or not rec.rejected:
            raise DataError(
                [Problem(where(rec.meta), "expected a preference record (prompt + chosen + rejected)")]
            )
        prompt = renderer.prepare(with_system(rec.messages, system_prompt))
        for side in (rec.chosen, rec.rejected):
            text, spans, msgs = renderer.chat_spans(
                prompt + list(side), rec.meta, prepared=True, from_turn=len(prompt)
            )
            if not spans:
                raise _not_prefix(rec.meta)
            # From where SFT would start supervising the first answer turn to the end of the last.
            span = [(spans[0][0], spans[-1][1], spans[-1][2])]
            escape = enc.escape and renderer.has_special_literal(msgs)
            content = renderer.content_regions(text, msgs) if escape else None
            rendered.append(Rendered(text, span, content, "pair", rec.meta, idx))

    L = cfg.max_length
    rows = PreferenceRows()
    problems: list[Problem] = []
    stats = enc.stats
    encoded = enc.encode(rendered)
    for k in range(0, len(encoded), 2):
        meta = rendered[k].meta
        sides = []
        for e in encoded[k : k + 2]:
            if not e.spans:
                raise _not_prefix(meta)
            a, b, t = e.spans[0]
            sides.append((e.ids[:b], a, t))
        if max(len(ids) for ids, _a, _t in sides) > L:
            if cfg.overflow == "drop":
                stats["dropped_too_long"] += 1
                continue
            if cfg.overflow == "error":
                n = max(len(ids) for ids, _a, _t in sides)
                problems.append(
                    Problem(
                        where(meta),
                        f"{n} tokens > tokenize.max_length {L} "
                        "(set tokenize.overflow: truncate|drop or raise max_length)",
                    )
                )
                continue
            cut = []
            for ids, a, t in sides:
                if len(ids) > L:
                    ids, sup = truncate(ids, [(a, len(ids), t)], [(a, len(ids))], L, False)
                    if not sup:
                        break
                cut.append((ids, a, t))
            if len(cut) < 2:
                stats["dropped_no_supervised"] += 1
                continue
            sides = cut
            stats["truncated"] += 1
        (c_ids, c_a, _), (r_ids, r_a, _) = sides
        p = _common_prefix(c_ids[:c_a], r_ids[:r_a])
        if p < c_a or p < r_a:
            stats["prompt_boundary_merges"] += 1
        rows.append({"prompt_ids": c_ids[:p], "chosen_ids": c_ids[p:], "rejected_ids": r_ids[p:]})
    if problems:
        raise DataError(problems, header=f"{len(problems)} pair(s) exceed tokenize.max_length {L}")
    rows.stats = {
        "n_in": len(records),
        "n_out": len(rows),
        **{
            key: stats[key]
            for key in (
                "dropped_too_long",
                "truncated",
                "dropped_no_supervised",
                "special_tokens_escaped",
                "system_merged",
                "double_bos_removed",
                "prompt_boundary_merges",
            )
        },
    }
    return rows


def preference_tokenize_config(cfg: Any) -> TokenizeConfig:
    """`tokenize:` with the pair length preference training uses (train.preference.max_length)."""
    max_length = cfg.train.preference.max_length or cfg.tokenize.max_length
    return cfg.tokenize.model_copy(update={"max_length": max_length})


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def orpo_row(row: dict[str, list[int]]) -> dict[str, list[int]]:
    """A pre-tokenized pair in the columns ORPOTrainer's tokenize_row would have produced."""
    p = list(row["prompt_ids"])
    out = {"prompt_input_ids": p, "prompt_attention_mask": [1] * len(p)}
    for side in ("chosen", "rejected"):
        c = list(row[f"{side}_ids"])
        out[f"{side}_input_ids"] = p + c
        out[f"{side}_attention_mask"] = [1] * (len(p) + len(c))
        out[f"{side}_labels"] = [IGNORE_INDEX] * len(p) + c
    return out


def preference_dataset(rows: list[dict[str, list[int]]], method: str = "dpo") -> Any:
    """The `datasets.Dataset` to hand TRL's DPOTrainer (method 'dpo') or ORPOTrainer ('orpo')."""
    from datasets import Dataset

    if method not in ("dpo", "orpo"):
        raise ValueError(f"preference_dataset: method must be 'dpo' or 'orpo', got {method!r}")
    columns = DPO_COLUMNS if method == "dpo" else ORPO_COLUMNS
    data = [{c: r[c] for c in DPO_COLUMNS} for r in rows] if method == "dpo" else [orpo_row(r) for r in rows]
    if not data:
        return Dataset.from_dict({c: [] for c in columns})
    return Dataset.from_list(data)


def _pretokenized(columns: Any) -> bool:
    cols = set(columns or ())
    return set(DPO_COLUMNS) <= cols or set(ORPO_COLUMNS) <= cols


class PretokenizedPreferences:
    """Mix into TRL's DPOTrainer / ORPOTrainer, before it in the bases, so rows from
    `preference_dataset` reach the model as they are; anything else TRL tokenizes as usual."""

    def _prepare_dataset(self, dataset: Any, processing_class: Any, args: Any, dataset_name: str) -> Any:
        columns = getattr(dataset, "column_names", None) or next(iter(dataset)).keys()
        if _pretokenized(columns):
            return dataset
        return super()._prepare_dataset(dataset, processing_class, args, dataset_name)  # type: ignore[misc]

    def tokenize_row(self, feature: dict[str, Any], model: Any = None) -> dict[str, Any]:
        if _pretokenized(feature.keys()):
            return {}
        return super().tokenize_row(feature, model)  # type: ignore[misc]


def format_preference_split(
    records: list[Record], tokenizer: Any, *, system_prompt: str | None = None
) -> list[dict[str, str]]:
    """Preference pairs as prompt/chosen/rejected strings rendered with the training template
    (for reading; training uses `tokenize_preference_split`)."""
    from tuneline.tokenize.render import Renderer

    renderer = Renderer(tokenizer)
    out = []
    for rec in records:
        prompt_msgs = renderer.prepare(with_system(rec.messages, system_prompt))
        prompt = renderer.text(prompt_msgs, rec.meta, agp=True, prepared=True)
        row = {"prompt": prompt}
        for key in ("chosen", "rejected"):
            full = renderer.text(prompt_msgs + list(getattr(rec, key) or []), rec.meta, prepared=True)
            if not full.startswith(prompt):
                raise _not_prefix(rec.meta)
            row[key] = full[len(prompt) :]
        out.append(row)
    return out
