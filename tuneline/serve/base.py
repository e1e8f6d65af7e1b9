"""The exact base model an adapter applies to, written down so that it loads anywhere.

Training records the base as the config named it (`tuneline_train.json` `base_model`): a hub
name, maybe without a revision, or a path relative to the project it ran in. A registered or
exported adapter must not depend on either: `pin_base` turns a local base into its absolute
path (it then loads without the network) and a hub base into name + the revision this machine
holds, before the adapter leaves the project.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tuneline.errors import UserError
from tuneline.train.loading import is_adapter_dir

TRAIN_SUMMARY = "tuneline_train.json"  # tuneline.train.recipe.SUMMARY_FILE, without importing training


def recorded_base(model_dir: str | Path) -> dict[str, Any] | None:
    """The base an adapter directory says it applies to, as a `model:` section; None for a full
    model. Prefers tuneline's record (it has from_config, dtype, ...) over PEFT's."""
    model_dir = Path(model_dir)
    if not is_adapter_dir(model_dir):
        return None
    summary = model_dir / TRAIN_SUMMARY
    if summary.is_file():
        recorded = json.loads(summary.read_text()).get("base_model")
        if recorded:
            return dict(recorded)
    peft = json.loads((model_dir / "adapter_config.json").read_text())
    if peft.get("base_model_name_or_path"):
        return {"name_or_path": peft["base_model_name_or_path"], "revision": peft.get("revision")}
    raise UserError(
        f"{model_dir}: an adapter that names no base model (no {TRAIN_SUMMARY}, no base_model_name_or_path "
        "in adapter_config.json); set base_model_name_or_path in its adapter_config.json"
    )


def cached_hub_revision(repo_id: str, cache_dir: str | Path | None = None) -> str | None:
    """The commit of `repo_id` in the local Hugging Face cache (what training loaded), if any."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    found = try_to_load_from_cache(repo_id, "config.json", cache_dir=cache_dir)
    if not isinstance(found, str):
        return None
    parts = Path(found).parts
    return parts[-2] if len(parts) >= 3 and parts[-3] == "snapshots" else None


def pin_base(
    recorded: dict[str, Any], base_dir: str | Path = ".", hub_cache: str | Path | None = None
) -> dict[str, Any]:
    """`recorded` with its local paths made absolute and, for a hub base without a revision, the
    revision in the local cache. A from_config base needs neither: it is rebuilt from its config."""
    out = dict(recorded)
    if out.get("from_config") is not None:
        tok = out.get("tokenizer")
        if tok and (Path(base_dir) / tok).exists():
            out["tokenizer"] = str((Path(base_dir) / tok).resolve())
        return out
    for key in ("name_or_path", "tokenizer"):
        value = out.get(key)
        if value and (Path(base_dir) / Path(value).expanduser()).exists():
            out[key] = str((Path(base_dir) / Path(value).expanduser()).resolve())
    name = out.get("name_or_path")
    if name and not Path(name).is_absolute() and not out.get("revision"):
        out["revision"] = cached_hub_revision(name, hub_cache)
    return out


def describe_base(recorded: dict[str, Any]) -> str:
    if recorded.get("from_config") is not None:
        return f"from_config ({recorded['from_config'].get('model_type', 'llama')}, init_seed {recorded.get('init_seed', 0)})"
    rev = recorded.get("revision")
    return f"{recorded.get('name_or_path')}" + (f"@{rev}" if rev else "")
