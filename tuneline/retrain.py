"""Whether a run should train: `retrain.when: data_changed` skips a run whose data the current
champion was already trained on.

A scheduled run re-executes a pipeline compiled once, in the orchestrator's process, so both
halves of the question are answered there, at run time, never at submit time:

- `live_data_fingerprint`: the data sources as they are now. Local files are hashed by content
  (`source_fingerprint`); a hub dataset without a pinned `revision` adds the commit the hub
  resolves it to today, so a new upload is new data even though the config did not change.
  It also keys the load step's cache, which would otherwise keep serving the records loaded
  when the schedule was created.
- `decide`: the loaded splits' content fingerprints against the `data.fingerprint.<split>` tags
  registration wrote on the version holding `@champion`.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from tuneline.config.data import DataConfig

log = logging.getLogger("tuneline")

FINGERPRINT_TAG_PREFIX = "data.fingerprint."
# MLflow run tags of the decision, on the pipeline run's MLflow run.
DECISION_TAG = "tuneline.retrain"  # "train" | "skipped"
DECISION_REASON_TAG = "tuneline.retrain.reason"
CHAMPION_TAG = "tuneline.retrain.champion_version"
SKIPPED_RUN_TYPE = "skipped"


@dataclass
class RetrainDecision:
    train: bool
    reason: str
    fingerprints: dict[str, str] = field(default_factory=dict)
    champion_version: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary_line(self) -> str:
        if self.train:
            return f"retrain: {self.reason}"
        return (
            f"skipped: {self.reason}: nothing trained, evaluated or registered (retrain.when: data_changed)"
        )


def resolved_hub_revisions(data: DataConfig, base_dir: str) -> dict[str, str]:
    """`{config key: commit}` for each hub source without a pinned revision, as the hub
    resolves it now. Offline (`HF_HUB_OFFLINE`) or unreachable, the source is left out: the
    run then goes by the config and the local copy, as the load step does."""
    from tuneline.data import sources as S
    from tuneline.data.loader import keyed_sources

    out: dict[str, str] = {}
    wanted = [
        (key, src)
        for key, src in keyed_sources(data)
        if src.hub is not None and src.revision is None and S.hub_local_dir(src.hub, base_dir) is None
    ]
    if not wanted or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return out
    try:
        from huggingface_hub import HfApi
    except ImportError:
        return out
    api = HfApi()
    for key, src in wanted:
        try:
            sha = api.dataset_info(src.hub).sha
        except Exception as e:  # any hub failure means "not resolvable now"
            log.warning("%s: cannot resolve the current revision of %s: %s", key, src.hub, e)
            continue
        if sha:
            out[key] = sha
    return out


def live_data_fingerprint(data: DataConfig, base_dir: str) -> str:
    """The data sources' fingerprint as they are at this moment (see the module docstring).
    Equal to `source_fingerprint` when every hub source is pinned or local."""
    from tuneline.data import source_fingerprint

    base = source_fingerprint(data, base_dir)
    revisions = resolved_hub_revisions(data, base_dir)
    if not revisions:
        return base
    h = hashlib.sha256(base.encode())
    for key, sha in sorted(revisions.items()):
        h.update(f"{key}@{sha}".encode())
    return h.hexdigest()[:16]


def champion_fingerprints(client: Any, model_name: str, alias: str) -> tuple[str | None, dict[str, str]]:
    """(version holding `@alias`, its `data.fingerprint.<split>` tags); (None, {}) with no champion."""
    from mlflow.exceptions import MlflowException

    try:
        mv = client.get_model_version_by_alias(model_name, alias)
    except MlflowException as e:
        if getattr(e, "error_code", None) not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise
        return None, {}
    tags = mv.tags or {}
    recorded = {
        k.removeprefix(FINGERPRINT_TAG_PREFIX): v
        for k, v in tags.items()
        if k.startswith(FINGERPRINT_TAG_PREFIX)
    }
    return str(mv.version), recorded


def decide(client: Any, model_name: str, alias: str, fingerprints: dict[str, str]) -> RetrainDecision:
    """Skip only when every split's content equals what the champion was trained and scored on:
    a split added, dropped or edited (train or eval data) is new data."""
    current = {k: str(v) for k, v in fingerprints.items()}
    version, recorded = champion_fingerprints(client, model_name, alias)
    if version is None:
        return RetrainDecision(True, f"no version of '{model_name}' holds @{alias}", current)
    if not recorded:
        return RetrainDecision(
            True, f"champion v{version} has no data fingerprint recorded; training", current, version
        )
    if recorded == current:
        return RetrainDecision(False, f"data unchanged since champion v{version}", current, version)
    changed = sorted(k for k in set(recorded) | set(current) if recorded.get(k) != current.get(k))
    detail = ", ".join(f"{k} {recorded.get(k, '-')} -> {current.get(k, '-')}" for k in changed)
    return RetrainDecision(True, f"data changed since champion v{version} ({detail})", current, version)


def retrain_note(decision: dict[str, Any]) -> str:
    """The run summary's line for a decision (the `retrain_decision` artifact)."""
    return RetrainDecision(**decision).summary_line()
