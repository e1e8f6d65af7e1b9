"""Judging a fine-tuned model against its base on held-out data.

Two complementary signals: eval loss on the supervised tokens (cheap, exact) and
answers generated for held-out prompts, scored with ROUGE-L and exact match
(what a user actually sees). ROUGE-L is computed here, not with
`evaluate.load("rouge")`, because that fetches a metric script from the hub.
"""

from __future__ import annotations

import json
import math
import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneline.config import ModelConfig, ProjectConfig
from tuneline.data.records import Record
from tuneline.tokenize import TokenizedSplit, encode_for_inference
from tuneline.train.loading import load_model

_PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")


def _norm_tokens(text: str) -> list[str]:
    return _PUNCT.sub(" ", text.lower()).split()


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 over lowercase, punctuation-free words (the rouge_score convention)."""
    p, r = _norm_tokens(prediction), _norm_tokens(reference)
    if not p or not r:
        return float(p == r)
    prev = [0] * (len(r) + 1)
    for a in p:
        cur = [0]
        for j, b in enumerate(r, 1):
            cur.append(prev[j - 1] + 1 if a == b else max(prev[j], cur[j - 1]))
        prev = cur
    lcs = prev[-1]
    if lcs == 0:
        return 0.0
    prec, rec = lcs / len(p), lcs / len(r)
    return 2 * prec * rec / (prec + rec)


def exact_match(prediction: str, reference: str) -> float:
    return float(_norm_tokens(prediction) == _norm_tokens(reference))


def eval_loss(model: Any, split: TokenizedSplit, collator: Any, batch_size: int = 8) -> float:
    """Mean loss per supervised token (not per batch), so batch composition cannot skew it."""
    import torch

    if len(split) == 0:
        return float("nan")
    device = next(model.parameters()).device
    model.eval()
    total, count = 0.0, 0
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
            shift_logits = logits[:, :-1].reshape(-1, logits.size(-1))
            shift_labels = labels[:, 1:].reshape(-1)
            loss = torch.nn.functional.cross_entropy(
                shift_logits, shift_labels, ignore_index=-100, reduction="sum"
            )
            total += loss.item()
            count += int((shift_labels != -100).sum())
    return total / max(count, 1)


def prompt_and_reference(record: Record) -> tuple[list[dict[str, str]], str] | None:
    """Held-out chat record -> (prompt turns, reference answer); None if it has no final answer."""
    if record.kind != "chat" or not record.messages or record.messages[-1]["role"] != "assistant":
        return None
    return record.messages[:-1], record.messages[-1]["content"]


@dataclass
class GenerationResult:
    predictions: list[str] = field(default_factory=list)
    references: list[str] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)

    def scores(self) -> dict[str, float]:
        n = len(self.predictions)
        if n == 0:
            return {}
        return {
            "rouge_l": sum(rouge_l(p, r) for p, r in zip(self.predictions, self.references, strict=True)) / n,
            "exact_match": sum(
                exact_match(p, r) for p, r in zip(self.predictions, self.references, strict=True)
            )
            / n,
        }


def generate_answers(
    model: Any,
    tokenizer: Any,
    records: list[Record],
    *,
    max_new_tokens: int = 64,
    batch_size: int = 8,
    stop_token_ids: list[int] | None = None,
) -> GenerationResult:
    """Greedy answers to held-out prompts, rendered with the same chat template as training."""
    import torch

    pairs = [pr for r in records if (pr := prompt_and_reference(r)) is not None]
    out = GenerationResult()
    if not pairs:
        return out
    device = next(model.parameters()).device
    model.eval()
    stop = list(stop_token_ids or [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in stop:
        stop.append(tokenizer.eos_token_id)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop[0]
    for i in range(0, len(pairs), batch_size):
        chunk = pairs[i : i + batch_size]
        texts = [
            tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
            for msgs, _ in chunk
        ]
        encoded = [encode_for_inference(tokenizer, t) for t in texts]
        width = max(len(e) for e in encoded)
        # Left padding so every prompt ends where generation starts.
        ids = torch.tensor([[pad_id] * (width - len(e)) + e for e in encoded], device=device)
        mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded], device=device)
        with torch.no_grad():
            gen = model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=stop,
                pad_token_id=pad_id,
            )
        for (_, ref), text, row in zip(chunk, texts, gen[:, width:].tolist(), strict=True):
            cut = next((k for k, t in enumerate(row) if t in stop), len(row))
            out.predictions.append(tokenizer.decode(row[:cut], skip_special_tokens=True).strip())
            out.references.append(ref)
            out.prompts.append(text)
    return out


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _as_model_config(cfg: ProjectConfig, path: str) -> ModelConfig:
    """The project's model settings (dtype, attention, trust_remote_code) applied to another directory."""
    return cfg.model.model_copy(update={"name_or_path": path, "from_config": None, "revision": None})


def load_start_model(cfg: ProjectConfig, vocab_size: int) -> Any:
    """The model training started from, decided by the same function training uses:
    model.*, or the preference reference (a full model, or an adapter on model.*)."""
    from tuneline.train import start_model_config

    base_cfg, adapter = start_model_config(cfg)
    model = load_model(base_cfg, cfg.base_dir, vocab_size=vocab_size)
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    return model.to(default_device())


def load_trained_model(cfg: ProjectConfig, model_dir: str | Path, vocab_size: int) -> Any:
    """A training output dir -> model. An adapter goes on the exact base it was trained on,
    as recorded in tuneline_train.json (e.g. a full SFT model that DPO started from)."""
    model_dir = Path(model_dir)
    if not (model_dir / "adapter_config.json").exists():
        return load_model(_as_model_config(cfg, str(model_dir)), cfg.base_dir).to(default_device())
    from peft import PeftModel

    meta_file = model_dir / "tuneline_train.json"
    base_cfg = cfg.model
    if meta_file.exists():
        recorded = json.loads(meta_file.read_text()).get("base_model")
        if recorded:
            base_cfg = ModelConfig.model_validate(recorded)
    base = load_model(base_cfg, cfg.base_dir, vocab_size=vocab_size)
    return PeftModel.from_pretrained(base, str(model_dir)).to(default_device())


def evaluate_sft(
    cfg: ProjectConfig, model_dir: str, tokenizer: Any, split: TokenizedSplit | None, records: list[Record]
) -> tuple[dict[str, float], dict[str, float], GenerationResult]:
    """(base scores, fine-tuned scores, fine-tuned generations) on held-out data."""
    from tuneline.tokenize import end_of_turn_token_ids
    from tuneline.tokenize.collate import DataCollator

    collator = DataCollator(
        pad_token_id=tokenizer.pad_token_id, packed=split is not None and split.position_ids is not None
    )
    stop = end_of_turn_token_ids(tokenizer)

    def score(model: Any) -> tuple[dict[str, float], GenerationResult]:
        out = (
            {"eval_loss": eval_loss(model, split, collator, cfg.eval.batch_size)} if split is not None else {}
        )
        gen = generate_answers(
            model,
            tokenizer,
            records,
            max_new_tokens=cfg.eval.max_new_tokens,
            batch_size=cfg.eval.batch_size,
            stop_token_ids=stop,
        )
        out.update(gen.scores())
        return out, gen

    base_scores: dict[str, float] = {}
    if cfg.eval.compare_base:
        base = load_start_model(cfg, len(tokenizer))
        base_scores, _ = score(base)
        del base
    tuned_scores, gen = score(load_trained_model(cfg, model_dir, len(tokenizer)))
    return base_scores, tuned_scores, gen


def evaluate_preference(
    cfg: ProjectConfig, model_dir: str, tokenizer: Any, records: list[Record]
) -> tuple[dict[str, float], dict[str, float]]:
    """(base scores, tuned scores): the base to beat is where training started."""
    base_scores: dict[str, float] = {}
    if cfg.eval.compare_base:
        base = load_start_model(cfg, len(tokenizer))
        base_scores = preference_scores(base, tokenizer, records)
        del base
    tuned = load_trained_model(cfg, model_dir, len(tokenizer))
    return base_scores, preference_scores(tuned, tokenizer, records)


def compare(base: dict[str, float], tuned: dict[str, float]) -> dict[str, float]:
    """Flat metrics dict with base_/finetuned_ prefixes and deltas, as logged to MLflow."""
    out: dict[str, float] = {}
    for k in sorted(set(base) | set(tuned)):
        b, t = base.get(k), tuned.get(k)
        if b is not None:
            out[f"base_{k}"] = b
        if t is not None:
            out[f"finetuned_{k}"] = t
        if b is not None and t is not None and math.isfinite(b) and math.isfinite(t):
            out[f"delta_{k}"] = t - b
    return out


def _completion_logprob(
    model: Any, tokenizer: Any, prompt_msgs: list[dict], answer_msgs: list[dict]
) -> float:
    """Sum of log-probs of the answer tokens given the prompt, both rendered by the chat template."""
    import torch

    prompt = tokenizer.apply_chat_template(prompt_msgs, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(prompt_msgs + answer_msgs, tokenize=False)
    if not full.startswith(prompt):
        raise ValueError("chat template is not prefix-stable; cannot score completions")
    p_ids = encode_for_inference(tokenizer, prompt)
    a_ids = tokenizer(full[len(prompt) :], add_special_tokens=False)["input_ids"]
    device = next(model.parameters()).device
    ids = torch.tensor([p_ids + a_ids], device=device)
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, :-1].float()
    logp = torch.log_softmax(logits, dim=-1)
    targets = ids[0, 1:]
    start = len(p_ids) - 1
    return float(logp[start:].gather(1, targets[start:, None]).sum())


def preference_scores(model: Any, tokenizer: Any, records: list[Record]) -> dict[str, float]:
    """How often the model assigns the chosen answer more probability than the rejected one."""
    model.eval()
    wins, margins = 0, []
    pairs = [r for r in records if r.kind == "preference" and r.chosen and r.rejected]
    for r in pairs:
        c = _completion_logprob(model, tokenizer, r.messages, r.chosen or [])
        j = _completion_logprob(model, tokenizer, r.messages, r.rejected or [])
        wins += c > j
        margins.append(c - j)
    if not pairs:
        return {}
    return {"preference_accuracy": wins / len(pairs), "logprob_margin": sum(margins) / len(margins)}
