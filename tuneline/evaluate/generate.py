"""Running models on held-out data: per-sample eval loss, greedy answers, preference log-probs.

Everything here returns per-sample values, not averages, so the report can bootstrap an
interval over samples and pair two systems sample by sample. Loading a model for
evaluation (the base training started from, a trained output, a registered champion)
lives here too, so all three load the same way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneline.config import ModelConfig, ProjectConfig, TokenizeConfig
from tuneline.data.records import Record
from tuneline.errors import ConfigError, Problem
from tuneline.evaluate.tool_calls import tool_prompt_and_reference
from tuneline.report.progress import ProgressLine
from tuneline.tokenize import (
    IGNORE_INDEX,
    TokenizedSplit,
    encode_prompts,
    tokenize_preference_split,
)
from tuneline.train.loading import load_model


@dataclass
class LossSums:
    """Summed loss and supervised-token count per eval row: the loss of any set of rows is
    sum(sums) / sum(counts), so a bootstrap resample costs two sums."""

    sums: list[float] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)

    @property
    def mean(self) -> float:
        total = sum(self.counts)
        return sum(self.sums) / total if total else float("nan")


def eval_loss_sums(model: Any, split: TokenizedSplit, collator: Any, batch_size: int = 8) -> LossSums:
    """Per-row loss sums and supervised-token counts (a packed row is one sample)."""
    import torch

    out = LossSums()
    if len(split) == 0:
        return out
    device = next(model.parameters()).device
    model.eval()
    with torch.no_grad():
        for i in range(0, len(split), batch_size):
            rows = []
            for j in range(i, min(i + batch_size, len(split))):
                row = {"input_ids": split.input_ids[j], "labels": split.labels[j]}
                if split.position_ids is not None:
                    row["position_ids"] = split.position_ids[j]
                rows.append(row)
            batch = {k: v.to(device) if hasattr(v, "to") else v for k, v in collator(rows).items()}
            labels = batch.pop("labels")
            logits = model(**batch).logits.float()
            shift_labels = labels[:, 1:]
            loss = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.size(-1)),
                shift_labels.reshape(-1),
                ignore_index=IGNORE_INDEX,
                reduction="none",
            ).view(shift_labels.shape)
            out.sums += loss.sum(dim=1).tolist()
            out.counts += (shift_labels != IGNORE_INDEX).sum(dim=1).tolist()
    return out


def eval_loss(model: Any, split: TokenizedSplit, collator: Any, batch_size: int = 8) -> float:
    """Mean loss per supervised token (not per batch), so batch composition cannot skew it."""
    return eval_loss_sums(model, split, collator, batch_size).mean


def prompt_and_reference(record: Record) -> tuple[list[dict[str, str]], str] | None:
    """Held-out chat record -> (prompt turns, reference answer); None if it has no final answer."""
    if record.tools is not None and record.kind == "chat":
        return tool_prompt_and_reference(record)  # scored on its first tool call
    if record.kind != "chat" or not record.messages or record.messages[-1]["role"] != "assistant":
        return None
    return record.messages[:-1], record.messages[-1]["content"]


@dataclass
class GenerationResult:
    predictions: list[str] = field(default_factory=list)
    references: list[str] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)  # as rendered for the model
    questions: list[str] = field(default_factory=list)  # the last prompt turn, for people to read


def generate_answers(
    model: Any,
    tokenizer: Any,
    records: list[Record],
    *,
    max_new_tokens: int = 64,
    batch_size: int = 8,
    stop_token_ids: list[int] | None = None,
    tokenize_cfg: TokenizeConfig | None = None,
) -> GenerationResult:
    """Greedy answers to held-out prompts, rendered and encoded exactly as training renders a prompt."""
    pairs = [(*pr, r.meta) for r in records if (pr := prompt_and_reference(r)) is not None]
    tools = [r.tools for r in records if prompt_and_reference(r) is not None]
    out = GenerationResult()
    if not pairs:
        return out
    model.eval()
    stop = stop_ids(tokenizer, stop_token_ids)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop[0]
    progress = ProgressLine("eval generate", len(pairs), unit="prompts", show_rate=True)
    for i in range(0, len(pairs), batch_size):
        chunk = pairs[i : i + batch_size]
        texts, encoded = encode_prompts(
            tokenizer,
            [msgs for msgs, _, _ in chunk],
            tokenize_cfg,
            metas=[meta for _, _, meta in chunk],
            tools=tools[i : i + batch_size],
        )
        rows = generate_batch(
            model, encoded, pad_id=pad_id, stop=stop, max_new_tokens=max_new_tokens, do_sample=False
        )
        for (msgs, ref, _), text, (row, cut) in zip(chunk, texts, rows, strict=True):
            out.predictions.append(tokenizer.decode(row[:cut], skip_special_tokens=True).strip())
            out.references.append(ref)
            out.prompts.append(text)
            out.questions.append(str(msgs[-1].get("content", "")) if msgs else "")
        progress.update(len(out.predictions))
    progress.finish()
    return out


def stop_ids(tokenizer: Any, stop_token_ids: list[int] | None) -> list[int]:
    """The end-of-turn ids, plus EOS: generation stops at whichever the model writes first."""
    stop = list(stop_token_ids or [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in stop:
        stop.append(tokenizer.eos_token_id)
    return stop


def generate_batch(
    model: Any, encoded: list[list[int]], *, pad_id: int, stop: list[int], **generate_kwargs: Any
) -> list[tuple[list[int], int | None]]:
    """Generate after each encoded prompt; per prompt, (the new token ids, the index of the stop
    token in them or None when the answer ran out of tokens). Evaluation and the serving commands
    both generate here, so `run.py generate` answers exactly what evaluation scored."""
    import torch

    device = next(model.parameters()).device
    width = max(len(e) for e in encoded)
    # Left padding so every prompt ends where generation starts.
    ids = torch.tensor([[pad_id] * (width - len(e)) + e for e in encoded], device=device)
    mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded], device=device)
    with torch.no_grad():
        gen = model.generate(
            input_ids=ids, attention_mask=mask, eos_token_id=stop, pad_token_id=pad_id, **generate_kwargs
        )
    rows = gen[:, width:].tolist()
    return [(row, next((k for k, t in enumerate(row) if t in stop), None)) for row in rows]


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _as_model_config(cfg: ProjectConfig, path: str) -> ModelConfig:
    """The project's model settings (dtype, attention, trust_remote_code) applied to another directory."""
    return cfg.model.model_copy(update={"name_or_path": path, "from_config": None, "revision": None})


def _load(model_cfg: ModelConfig, base_dir: str, vocab_size: int | None = None) -> Any:
    """load_model, with a refused custom-code model reported against the config key that allows it."""
    try:
        return load_model(model_cfg, base_dir, vocab_size=vocab_size)
    except ValueError as e:
        if "trust_remote_code" not in str(e):
            raise
        raise ConfigError(
            [
                Problem(
                    "model.trust_remote_code",
                    f"'{model_cfg.name_or_path}' needs custom code from its model directory to load; "
                    "set model.trust_remote_code: true only if you trust that code",
                )
            ]
        ) from e


def load_start_model(cfg: ProjectConfig, vocab_size: int) -> Any:
    """The model training started from, decided by the same function training uses:
    model.*, or the preference reference (a full model, or an adapter on model.*)."""
    from tuneline.train import start_model_config

    base_cfg, adapter = start_model_config(cfg)
    base_cfg = base_cfg.model_copy(update={"trust_remote_code": cfg.model.trust_remote_code})
    model = _load(base_cfg, cfg.base_dir, vocab_size=vocab_size)
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    return model.to(default_device())


def load_trained_model(cfg: ProjectConfig, model_dir: str | Path, vocab_size: int) -> Any:
    """A training output dir -> model. An adapter goes on the exact base it was trained on,
    as recorded in tuneline_train.json (e.g. a full SFT model that DPO started from).

    Whether code from a model directory may run is this config's decision
    (model.trust_remote_code), never the value a training run recorded.
    """
    model_dir = Path(model_dir)
    if not (model_dir / "adapter_config.json").exists():
        return _load(_as_model_config(cfg, str(model_dir)), cfg.base_dir).to(default_device())
    from peft import PeftModel

    meta_file = model_dir / "tuneline_train.json"
    base_cfg = cfg.model
    if meta_file.exists():
        recorded = json.loads(meta_file.read_text()).get("base_model")
        if recorded:
            base_cfg = ModelConfig.model_validate(
                {**recorded, "trust_remote_code": cfg.model.trust_remote_code}
            )
    base = _load(base_cfg, cfg.base_dir, vocab_size=vocab_size)
    return PeftModel.from_pretrained(base, str(model_dir)).to(default_device())


def _completion_logprob(model: Any, prompt_ids: list[int], completion_ids: list[int]) -> float:
    """Sum of log-probs of the completion tokens given the prompt."""
    import torch

    device = next(model.parameters()).device
    ids = torch.tensor([prompt_ids + completion_ids], device=device)
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, :-1].float()
    logp = torch.log_softmax(logits, dim=-1)
    targets = ids[0, 1:]
    start = len(prompt_ids) - 1
    return float(logp[start:].gather(1, targets[start:, None]).sum())


@dataclass
class PairScores:
    """Per pair: the texts as scored (decoded from the ids) and the model's per-pair statistics."""

    prompts: list[str] = field(default_factory=list)
    chosen: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    per_pair: dict[str, list[float]] = field(default_factory=dict)

    def means(self) -> dict[str, float]:
        return {k: sum(v) / len(v) for k, v in self.per_pair.items() if v}


def preference_pair_scores(
    model: Any,
    tokenizer: Any,
    records: list[Record],
    tokenize_cfg: TokenizeConfig | None = None,
    *,
    system_prompt: str | None = None,
) -> PairScores:
    """Whether the model prefers the chosen answer, pair by pair, on the ids preference training uses.

    Summed log-probs favour the shorter answer (every token costs probability), so the
    length-normalised view -- mean log-prob per completion token -- is reported too.
    """
    model.eval()
    pairs = [r for r in records if r.kind == "preference" and r.chosen and r.rejected]
    rows = tokenize_preference_split(
        pairs, tokenizer, tokenize_cfg or TokenizeConfig(), system_prompt=system_prompt
    )
    keys = (
        "preference_accuracy",
        "logprob_margin",
        "preference_accuracy_normalized",
        "logprob_margin_normalized",
    )
    out = PairScores(per_pair={k: [] for k in keys})
    for row in rows:
        p = row["prompt_ids"]
        if not p:
            raise ValueError("a preference prompt tokenized to nothing; cannot score its completions")
        c = _completion_logprob(model, p, row["chosen_ids"])
        j = _completion_logprob(model, p, row["rejected_ids"])
        cn, jn = c / len(row["chosen_ids"]), j / len(row["rejected_ids"])
        for k, v in zip(keys, (float(c > j), c - j, float(cn > jn), cn - jn), strict=True):
            out.per_pair[k].append(v)
        out.prompts.append(tokenizer.decode(p))
        out.chosen.append(tokenizer.decode(row["chosen_ids"]))
        out.rejected.append(tokenizer.decode(row["rejected_ids"]))
    return out


def preference_scores(
    model: Any,
    tokenizer: Any,
    records: list[Record],
    tokenize_cfg: TokenizeConfig | None = None,
    *,
    system_prompt: str | None = None,
) -> dict[str, float]:
    """Mean of `preference_pair_scores` over the pairs; {} without pairs."""
    return preference_pair_scores(
        model, tokenizer, records, tokenize_cfg, system_prompt=system_prompt
    ).means()
