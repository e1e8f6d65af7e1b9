"""Base vs fine-tuned through chat completions, scored exactly as local runs are scored.

Both models answer the held-out prompts greedily (temperature 0, a fixed seed, at most
`eval.max_new_tokens` tokens); the answers go through the same `score_outputs` (eval.metrics,
bootstrap intervals, paired deltas), champion comparison and report as a local evaluation.
There is no eval loss: the API returns text, not token losses.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from tuneline.config import ProjectConfig
from tuneline.data.records import Record
from tuneline.openai_backend.client import chat_answer

log = logging.getLogger("tuneline")

# What a registered API model keeps instead of weights (see tuneline.openai_backend.pyfunc).
MODEL_FILE = "openai_model.json"


def api_answers(client: Any, model: str, records: list[Record], *, max_tokens: int, seed: int = 0) -> Any:
    """A `GenerationResult` of `model`'s answers to each held-out record's prompt turns."""
    from tuneline.evaluate.generate import GenerationResult, prompt_and_reference
    from tuneline.report.progress import ProgressLine

    out = GenerationResult()
    pairs = [pr for r in records if (pr := prompt_and_reference(r)) is not None]
    progress = ProgressLine(f"eval {model[:40]}", len(pairs), unit="prompts", show_rate=True)
    for msgs, ref in pairs:
        messages = [{"role": m["role"], "content": m.get("content") or ""} for m in msgs]
        out.predictions.append(chat_answer(client, model, messages, max_tokens=max_tokens, seed=seed))
        out.references.append(ref)
        out.prompts.append(json.dumps(messages, ensure_ascii=False))
        out.questions.append(str(msgs[-1].get("content", "")) if msgs else "")
        progress.update(len(out.predictions))
    progress.finish()
    return out


def registered_api_model(local_dir: str) -> str | None:
    """The API model id a downloaded registry version answers with, or None for a local model."""
    root = Path(local_dir)
    for candidate in (root, *root.parents[:3]):
        found = next(iter(candidate.rglob(MODEL_FILE)), None) if candidate.is_dir() else None
        if found is not None:
            return str(json.loads(found.read_text())["model"])
    return None


def _pyfunc_answers(local_dir: str, records: list[Record]) -> Any:
    """A champion trained locally: its own MLflow pyfunc answers (the same generation it was scored with)."""
    import mlflow.pyfunc

    from tuneline.evaluate.generate import GenerationResult, prompt_and_reference

    root = Path(local_dir)
    model_root = next((p for p in (root, *root.parents[:3]) if (p / "MLmodel").is_file()), root)
    model = mlflow.pyfunc.load_model(str(model_root))
    pairs = [pr for r in records if (pr := prompt_and_reference(r)) is not None]
    answers = model.predict([{"messages": m} for m, _ in pairs]) if pairs else []
    return GenerationResult(
        predictions=[str(a) for a in answers],
        references=[ref for _, ref in pairs],
        prompts=[json.dumps(m, ensure_ascii=False) for m, _ in pairs],
        questions=[str(m[-1].get("content", "")) if m else "" for m, _ in pairs],
    )


def evaluate_openai(
    cfg: ProjectConfig,
    client: Any,
    tuned_model: str,
    records: list[Record],
    *,
    data_fingerprint: str,
    registry_client: Any = None,
) -> tuple[dict[str, Any], dict[str, float]]:
    """(report, flat MLflow metrics), the same shapes `tuneline.evaluate.judge.evaluate_sft` returns."""
    from tuneline.evaluate.judge import SystemOutput, build_report, score_champion, score_outputs
    from tuneline.evaluate.judge import _texts as texts_of
    from tuneline.evaluate.report import eval_set_fingerprint, flat_metrics

    e = cfg.eval
    seed = cfg.train.openai.seed if cfg.train.openai.seed is not None else cfg.train.seed

    def answers(model: str) -> SystemOutput:
        return SystemOutput(gen=api_answers(client, model, records, max_tokens=e.max_new_tokens, seed=seed))

    base_out = answers(str(cfg.model.name_or_path)) if e.compare_base else None
    tuned_out = answers(tuned_model)

    def rescore(local: str) -> SystemOutput:
        api_model = registered_api_model(local)
        if api_model is not None:
            return answers(api_model)
        return SystemOutput(gen=_pyfunc_answers(local, records))

    results = score_outputs(cfg, base_out, tuned_out)
    fingerprint = eval_set_fingerprint(cfg, data_fingerprint)
    champion = score_champion(cfg, fingerprint, tuned_out, registry_client, rescore)
    report = build_report(cfg, fingerprint, results, texts_of(base_out, tuned_out), champion)
    report["backend"] = "openai"
    report["models"] = {"base": cfg.model.name_or_path, "finetuned": tuned_model}
    flat = flat_metrics(results)
    for k, c in (champion.get("comparison") or {}).items():
        flat[f"vs_champion_delta_{k}"] = c["delta"]
    return report, flat
