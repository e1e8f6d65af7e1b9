"""Scoring a model trained earlier or elsewhere: a registered version or a local directory, on a
project's data, with the same report the training pipeline's evaluation writes.

The reference is resolved before any pipeline exists, so a bad one exits 2 with nothing
created, and what the run scores is exact: an alias is pinned to the version it points at
now, and the content fingerprint of the files scored is part of the run's cache key (a moved
alias or an edited directory is evaluated again, an unchanged one is served from the cache).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneline.config import ModelConfig, ProjectConfig
from tuneline.errors import UserError

# MLflow run tags that tell an evaluation run from a training run of the same experiment.
RUN_TYPE_TAG = "tuneline.run_type"
MODEL_REF_TAG = "tuneline.model_ref"
MODEL_FINGERPRINT_TAG = "tuneline.model_fingerprint"
EVAL_BASE_TAG = "tuneline.eval_base"

# Written by training next to the weights (tuneline.train.recipe.SUMMARY_FILE): the model
# configuration training loaded, and the adapter it continued, if any.
TRAIN_SUMMARY = "tuneline_train.json"


@dataclass(frozen=True)
class EvaluationTarget:
    """A model reference resolved for one evaluation run."""

    requested: str  # as the user wrote it
    reference: str  # pinned `models:/NAME/N`, or the absolute model directory
    model_dir: str  # the local Hugging Face directory that is scored
    fingerprint: str  # what is scored: registry identity and file content
    start: dict[str, Any] | None  # the recorded model config training started from; None: the config's
    start_adapter: str | None  # the recorded adapter training continued (preference runs)
    base_note: str  # where the base of the base-vs-model comparison comes from, for people

    def tags(self) -> dict[str, str]:
        return {
            RUN_TYPE_TAG: "evaluation",
            MODEL_REF_TAG: self.reference,
            MODEL_FINGERPRINT_TAG: self.fingerprint,
            EVAL_BASE_TAG: self.base_note[:500],
        }


def prepare_evaluation(
    cfg: ProjectConfig, ref: str, *, tracking_uri: str, cache_root: str
) -> EvaluationTarget:
    """Resolve `ref` (downloading a registered version into `cache_root`), fingerprint it and
    decide the comparison base. Raises UserError naming the reference and the fix."""
    from tuneline.fingerprints import directory_fingerprint
    from tuneline.tracking import resolve_model_ref

    registered = ref.startswith("models:/")
    if registered:
        _require_store(tracking_uri, ref)
    model_dir, pinned = resolve_model_ref(ref, tracking_uri=tracking_uri, cache_root=cache_root)
    content = directory_fingerprint(model_dir)
    if registered:
        identity = {"reference": pinned, "run_id": _version_run_id(tracking_uri, pinned), "content": content}
        fingerprint = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    else:
        fingerprint = content
    if cfg.kind != "preference":
        # Preference evaluation tokenizes with the model's own tokenizer; SFT evaluation scores
        # the eval loss on the split the config's tokenizer made.
        why = tokenizer_mismatch(cfg, model_dir)
        if why:
            raise UserError(
                f"--model {ref}: {why}, so the eval loss would be computed on token ids the model "
                "was not trained with; evaluate it with the config it was trained with"
            )
    start, adapter, note = recorded_start(cfg, model_dir)
    return EvaluationTarget(ref, pinned, model_dir, fingerprint, start, adapter, note)


def _require_store(uri: str, ref: str) -> None:
    from tuneline.home import missing_local_store, tuneline_home

    missing = missing_local_store(uri)
    if missing is not None:
        raise UserError(
            f"--model {ref}: no MLflow store at {missing} (TUNELINE_HOME={tuneline_home()}); "
            "set TUNELINE_HOME or MLFLOW_TRACKING_URI to the store the model was registered in, "
            "or give a model directory"
        )


def _version_run_id(uri: str, pinned: str) -> str:
    from mlflow import MlflowClient

    from tuneline.tracking import parse_model_uri

    name, _, version = parse_model_uri(pinned)
    return str(MlflowClient(tracking_uri=uri, registry_uri=uri).get_model_version(name, version).run_id)


def tokenizer_mismatch(cfg: ProjectConfig, model_dir: str) -> str | None:
    """Why the model's saved tokenizer does not tokenize as the config's prepared one, or None."""
    from transformers import AutoTokenizer

    from tuneline.tokenize import prepare_tokenizer
    from tuneline.train.loading import load_tokenizer

    try:
        theirs = AutoTokenizer.from_pretrained(model_dir)
    except (OSError, ValueError) as e:
        return f"no usable tokenizer in {model_dir} ({str(e).splitlines()[0][:200]})"
    ours = prepare_tokenizer(load_tokenizer(cfg.model, cfg.base_dir), cfg.template, cfg.base_dir)
    if ours.get_vocab() != theirs.get_vocab():
        return (
            f"its tokenizer ({len(theirs)} tokens) is not the config's model.tokenizer "
            f"'{cfg.model.tokenizer_path}' with template.* ({len(ours)} tokens)"
        )
    if cfg.kind == "chat" and (ours.chat_template or "") != (theirs.chat_template or ""):
        return "its chat template is not the one the config's template.* gives"
    return None


def _loadable(name: str, base_dir: str) -> bool:
    """Whether a recorded model path can still be loaded here (a hub name is assumed to be)."""
    p = Path(name).expanduser()
    if p.is_absolute():
        return p.exists()
    if (Path(base_dir) / p).exists():
        return True
    return not (name.startswith((".", "/")) or name.count("/") > 1)


def recorded_start(cfg: ProjectConfig, model_dir: str) -> tuple[dict[str, Any] | None, str | None, str]:
    """(recorded start model config, recorded start adapter, note): the base the model is compared
    with is the model its training started from, as training recorded it next to the weights;
    without a usable record, the config's model.* (and, for preference configs, its
    train.preference.reference_model), exactly what a training run of this config starts from."""
    fallback = "the config's model.*"
    meta = Path(model_dir) / TRAIN_SUMMARY
    if not meta.is_file():
        return None, None, f"{fallback} (the model directory records no start model)"
    try:
        summary = json.loads(meta.read_text())
        recorded = ModelConfig.model_validate({**summary["base_model"], "trust_remote_code": False})
    except (OSError, ValueError, KeyError, TypeError) as e:
        return None, None, f"{fallback} ({TRAIN_SUMMARY} has no usable base_model: {type(e).__name__})"
    adapter = summary.get("start_adapter") or None
    source = recorded.name_or_path
    if source and not _loadable(source, cfg.base_dir):
        return None, None, f"{fallback} (the recorded start model {source} is not here)"
    if adapter and not (cfg.kind == "preference" and os.path.isdir(adapter)):
        why = "is not here" if not os.path.isdir(adapter) else "needs a preference config"
        return None, None, f"{fallback} (the recorded start adapter {adapter} {why})"
    what = (
        source or f"from_config {recorded.from_config.get('model_type', 'llama')} (seed {recorded.init_seed})"
    )
    note = f"the start model recorded in {TRAIN_SUMMARY}: {what}" + (
        f" + adapter {adapter}" if adapter else ""
    )
    return summary["base_model"], adapter, note


def evaluation_config(cfg: ProjectConfig, target: EvaluationTarget) -> ProjectConfig:
    """`cfg` whose start model (what evaluation loads as the base) is the target's recorded one.

    Whether code from a model directory may run stays this config's decision
    (model.trust_remote_code), never the recorded value, as in `load_trained_model`.
    """
    if target.start is None:
        return cfg
    out = cfg.model_copy(deep=True)
    out.model = ModelConfig.model_validate({**target.start, "trust_remote_code": cfg.model.trust_remote_code})
    if cfg.kind == "preference":
        out.train.preference.reference_model = target.start_adapter
    return ProjectConfig.model_validate(out.model_dump())
