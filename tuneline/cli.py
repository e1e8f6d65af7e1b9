"""The parts of the CLI that need no ZenML: preflight validation, dry-run plan, preview, and the
registry commands (`models`, `promote`, `rollback`).

Preflight runs before any pipeline exists, so bad data fails fast with exit 2 and
leaves no half-made ZenML run, MLflow run or registered version behind.
"""

from __future__ import annotations

import json
import os
from typing import Any

from tuneline.config import ProjectConfig
from tuneline.data import load_records, source_fingerprint
from tuneline.data.records import RecordSet
from tuneline.errors import UserError
from tuneline.fingerprints import local_inputs_fingerprint
from tuneline.home import missing_local_store, mlflow_tracking_uri, redact_uri, tuneline_home


def preflight(cfg: ProjectConfig) -> tuple[dict[str, str], RecordSet]:
    """Everything that can be checked before a run exists, so a mistake exits 2 and leaves
    no ZenML run, MLflow run or registered version behind: the data (every problem at
    once), the tokenizer and chat template, and whether the method can run here.

    Returns the cache fingerprints: `data` (raw data files and data config) and
    `local_files` (the local tokenizer, template and model files the config points at).
    """
    fps = {"data": source_fingerprint(cfg.data, cfg.base_dir), "local_files": local_inputs_fingerprint(cfg)}
    records = load_records(cfg.data, cfg.base_dir, kind=cfg.kind)
    if cfg.train.backend == "openai":  # no local tokenizer or model: the API's format, price and key
        from tuneline.openai_backend.preflight import preflight_openai

        preflight_openai(cfg, records)
        return fps, records
    from tuneline.tokenize import prepare_tokenizer
    from tuneline.train.loading import load_tokenizer

    tokenizer = prepare_tokenizer(load_tokenizer(cfg.model, cfg.base_dir), cfg.template, cfg.base_dir)
    from tuneline.tokenize.tool_templates import require_tools_for

    require_tools_for(records, tokenizer.chat_template)
    if cfg.train.method in ("dpo", "orpo"):
        from tuneline.data.feedback import require_paired

        require_paired(records, cfg.train.method)
    if cfg.train.method == "qlora" and not cfg.train.resources.step_operator:
        # Training runs in this process's environment; on a step operator it runs elsewhere.
        from tuneline.train import require_qlora

        require_qlora()
    return fps, records


def dry_run(cfg: ProjectConfig, records: RecordSet, fingerprints: dict[str, str]) -> str:
    if cfg.train.backend == "openai":
        from tuneline.openai_backend.preflight import dry_run_openai

        return dry_run_openai(cfg, records, fingerprints)
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
    from tuneline.data.feedback import feedback_line, unused_lines

    lines += feedback_line(records) + unused_lines(info)
    return "\n".join(lines)


def preview(cfg: ProjectConfig, n: int, *, as_json: bool = False) -> list[str]:
    """Show N training examples exactly as the trainer receives them; needs only a tokenizer.

    SFT / continued pretraining: token ids and labels (-100 = masked). DPO / ORPO: the
    pre-tokenized prompt / chosen / rejected ids (with their decoded text) the trainer
    is handed.
    """
    from tuneline.tokenize import (
        preference_tokenize_config,
        prepare_tokenizer,
        tokenize_preference_split,
        tokenize_split,
    )
    from tuneline.tokenize.preview import (
        preference_json_lines,
        preference_preview,
        preview_json_lines,
        render_preview,
    )
    from tuneline.train.loading import load_tokenizer

    records = load_records(cfg.data, cfg.base_dir, kind=cfg.kind)
    tokenizer = prepare_tokenizer(load_tokenizer(cfg.model, cfg.base_dir), cfg.template, cfg.base_dir)
    sample = records.splits.get("train", [])[:n]
    if cfg.train.method == "kto":
        from tuneline.tokenize.feedback import feedback_preview

        return feedback_preview(cfg, sample, tokenizer, as_json=as_json)
    if cfg.kind == "preference":
        rows = tokenize_preference_split(sample, tokenizer, preference_tokenize_config(cfg))
        if as_json:
            return preference_json_lines(rows, tokenizer)
        return [preference_preview(rows, tokenizer)]
    split = tokenize_split(sample, tokenizer, cfg.tokenize)
    if cfg.tokenize.packing:
        from tuneline.tokenize.packing import pack_split

        split = pack_split(split, cfg.tokenize.max_length)
    if as_json:
        return preview_json_lines(split, tokenizer, n)
    return [render_preview(split, tokenizer, n)]


# --- the registry, operated by hand --------------------------------------------------------


def registry_target(config_path: str | None = None) -> tuple[str, Any]:
    """(the tracking/registry URI the pipeline writes to, the config's `registry` section or None).

    `--config` gives `tracking.mlflow_tracking_uri` and the registry settings (alias, metric);
    without it, MLFLOW_TRACKING_URI, else the SQLite file in TUNELINE_HOME: what a run with
    no tracking URI in its config registers into.
    """
    from tuneline.config import load_config

    cfg = load_config(config_path) if config_path else None
    uri = mlflow_tracking_uri(cfg.tracking.mlflow_tracking_uri if cfg else None)
    missing = missing_local_store(uri)
    if missing is not None:
        raise UserError(
            f"no MLflow store at {missing}: no pipeline has run with TUNELINE_HOME={tuneline_home()}; "
            "set TUNELINE_HOME or MLFLOW_TRACKING_URI, or pass --config with tracking.mlflow_tracking_uri"
        )
    return uri, (cfg.registry if cfg else None)


def _client(uri: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _aliases(reg: Any) -> Any:
    from tuneline.registry import Aliases

    return Aliases(reg.alias if reg is not None else "champion")


def models_command(name: str, *, config_path: str | None = None, show_history: bool = False) -> str:
    """Every version of `name`, newest first: aliases, scores, decision and lineage."""
    from tuneline.registry import (
        DEFAULT_TIE_BREAK,
        format_history,
        format_versions,
        history,
        list_versions,
    )

    uri, reg = registry_target(config_path)
    client = _client(uri)
    versions = list_versions(client, name, registry_uri=uri)
    metrics = None
    if reg is not None:
        tie = reg.tie_break_metric or DEFAULT_TIE_BREAK.get(reg.metric)
        metrics = [m for m in (reg.metric, tie) if m]
    out = [format_versions(name, versions, metrics=metrics, aliases=_aliases(reg))]
    out.append("")
    out.append("lineage (newest first):")
    for v in versions:
        lineage = v.lineage
        commit = lineage.get("git.commit", "?")
        out.append(
            f"  v{v.version}: run {v.run_id or '-'}  zenml {lineage.get('zenml.pipeline_run', '-')}  "
            f"git {commit[:12]}{'+dirty' if lineage.get('git.dirty') == 'true' else ''}  "
            f"config {lineage.get('config.sha256', '-')[:12]}  "
            f"base {lineage.get('base_model', '-')}"
            + (f"@{lineage['base_model.revision']}" if "base_model.revision" in lineage else "")
            + f"  data {lineage.get('data.sources', '-')}"
        )
    if show_history:
        out += ["", "history (oldest first):", format_history(history(client, name, registry_uri=uri))]
    out.append(f"\nregistry: {redact_uri(uri)}")
    return "\n".join(out)


def current_user() -> str:
    """Who is recorded for a manual change when --who is not given."""
    import getpass

    try:
        return os.environ.get("USER") or getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def promote_command(
    name: str,
    version: str,
    *,
    reason: str | None = None,
    who: str | None = None,
    config_path: str | None = None,
) -> str:
    """Make `version` @champion by hand; the current champion becomes @previous-champion."""
    from tuneline.registry import promote

    uri, reg = registry_target(config_path)
    result = promote(
        _client(uri),
        name,
        version,
        reason=reason or "promoted by hand (no --reason given)",
        who=who or current_user(),
        aliases=_aliases(reg),
        registry_uri=uri,
    )
    return f"{name}: {result.message}"


def rollback_command(
    name: str, *, reason: str | None = None, who: str | None = None, config_path: str | None = None
) -> str:
    """Move @champion back to @previous-champion; the rolled-back version is never re-promoted
    automatically."""
    from tuneline.registry import rollback

    uri, reg = registry_target(config_path)
    result = rollback(
        _client(uri),
        name,
        reason=reason or "rolled back by hand (no --reason given)",
        who=who or current_user(),
        aliases=_aliases(reg),
        registry_uri=uri,
    )
    return f"{name}: {result.message}"


def champion_version(name: str, *, config_path: str | None = None) -> str | None:
    """The version holding @champion (`registry.alias`) now, or None: what ZenML's production
    stage mirrors after a manual promote or rollback."""
    from mlflow.exceptions import MlflowException

    uri, reg = registry_target(config_path)
    try:
        return str(_client(uri).get_model_version_by_alias(name, _aliases(reg).champion).version)
    except MlflowException as e:
        if e.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        return None
