"""The parts of the CLI that need no ZenML: preflight validation, dry-run plan, preview.

Preflight runs before any pipeline exists, so bad data fails fast with exit 2 and
leaves no half-made ZenML run, MLflow run or registered version behind.
"""

from __future__ import annotations

import json

from tuneline.config import ProjectConfig
from tuneline.data import load_records, source_fingerprint
from tuneline.data.records import RecordSet
from tuneline.fingerprints import local_inputs_fingerprint
from tuneline.home import mlflow_tracking_uri, redact_uri, tuneline_home


def preflight(cfg: ProjectConfig) -> tuple[dict[str, str], RecordSet]:
    """Everything that can be checked before a run exists, so a mistake exits 2 and leaves
    no ZenML run, MLflow run or registered version behind: the data (every problem at
    once), the tokenizer and chat template, and whether the method can run here.

    Returns the cache fingerprints: `data` (raw data files and data config) and
    `local_files` (the local tokenizer, template and model files the config points at).
    """
    fps = {"data": source_fingerprint(cfg.data, cfg.base_dir), "local_files": local_inputs_fingerprint(cfg)}
    records = load_records(cfg.data, cfg.base_dir, kind=cfg.kind)
    from tuneline.tokenize import prepare_tokenizer
    from tuneline.train.loading import load_tokenizer

    prepare_tokenizer(load_tokenizer(cfg.model, cfg.base_dir), cfg.template, cfg.base_dir)
    if cfg.train.method == "qlora" and not cfg.train.resources.step_operator:
        # Training runs in this process's environment; on a step operator it runs elsewhere.
        from tuneline.train import require_qlora

        require_qlora()
    return fps, records


def dry_run(cfg: ProjectConfig, records: RecordSet, fingerprints: dict[str, str]) -> str:
    model = cfg.model.name_or_path or f"from_config ({cfg.model.from_config.get('model_type', 'llama')})"
    steps = (
        "load_dataset -> format_records -> "
        + (
            "train_preferences -> evaluate_preferences"
            if cfg.kind == "preference"
            else "tokenize_dataset -> train_model -> evaluate_model"
        )
        + " -> register_model"
    )
    lines = [
        "plan (dry run: nothing was trained, logged or registered)",
        f"  model:      {model}  tokenizer: {cfg.model.tokenizer_path}",
        f"  method:     {cfg.train.method}  lr={cfg.train.learning_rate}  max_steps={cfg.train.max_steps}"
        f"  batch={cfg.train.batch_size}x{cfg.train.gradient_accumulation_steps}",
        f"  data:       {', '.join(f'{k}={len(v)}' for k, v in records.splits.items())}  "
        f"(data fingerprint {fingerprints['data']}, local files {fingerprints['local_files']})",
        f"  template:   {cfg.template.jinja_path or cfg.template.name}  max_length={cfg.tokenize.max_length}"
        f"  packing={cfg.tokenize.packing}",
        f"  steps:      {steps}",
        f"  registry:   {cfg.registry.model_name} (promote to @{cfg.registry.alias} on {cfg.registry.metric})",
        f"  MLflow:     {redact_uri(mlflow_tracking_uri(cfg.tracking.mlflow_tracking_uri))}",
        f"  state:      {tuneline_home()}",
    ]
    info = records.info
    dropped = (info.get("dropped") or {}).get("total", 0)
    dedup = (info.get("dedup") or {}).get("removed", 0)
    overlap = info.get("overlap") or {}
    lines.append(
        f"  cleaning:   {dropped} invalid dropped, {dedup} duplicates removed, "
        f"{overlap.get('validation_removed', 0) + overlap.get('test_removed', 0)} eval records overlapping train removed"
    )
    if dropped:
        lines.append(f"  dropped by reason: {json.dumps((info.get('dropped') or {}).get('by_reason'))}")
    return "\n".join(lines)


def preview(cfg: ProjectConfig, n: int, *, as_json: bool = False) -> list[str]:
    """Show N training examples exactly as the trainer receives them; needs only a tokenizer.

    SFT / continued pretraining: token ids and labels (-100 = masked). DPO / ORPO: the
    prompt / chosen / rejected strings rendered with the training template, which TRL
    then tokenizes itself.
    """
    from tuneline.tokenize import format_preference_split, prepare_tokenizer, tokenize_split
    from tuneline.tokenize.preview import preview_json_lines, render_preview
    from tuneline.train.loading import load_tokenizer

    records = load_records(cfg.data, cfg.base_dir, kind=cfg.kind)
    tokenizer = prepare_tokenizer(load_tokenizer(cfg.model, cfg.base_dir), cfg.template, cfg.base_dir)
    sample = records.splits.get("train", [])[:n]
    if cfg.kind == "preference":
        rows = format_preference_split(sample, tokenizer)
        if as_json:
            return [json.dumps(r, ensure_ascii=False) for r in rows]
        out = []
        for i, r in enumerate(rows):
            out += [
                f"── pair {i}",
                "prompt:",
                r["prompt"],
                "chosen:",
                f"⟦{r['chosen']}⟧",
                "rejected:",
                f"⟦{r['rejected']}⟧",
                "",
            ]
        return out
    split = tokenize_split(sample, tokenizer, cfg.tokenize)
    if cfg.tokenize.packing:
        from tuneline.tokenize.packing import pack_split

        split = pack_split(split, cfg.tokenize.max_length)
    if as_json:
        return preview_json_lines(split, tokenizer, n)
    return [render_preview(split, tokenizer, n)]
