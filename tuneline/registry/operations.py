"""What an operator does with the registry: list versions, promote one, roll back, read the history.

Every change records who, when and why three ways: tags on the version that gained
`@champion`, tags on the one that lost it, and one append-only `history.*` event on the
registered model. Each also starts a new decision epoch, so an automatic decision racing
with a person never undoes the person's choice (see `register.verify_champion`).

Rollback moves `@champion` to `@previous-champion`. The rolled-back version does *not*
become `@previous-champion`: a rollback is a verdict that it is bad, so a second rollback
walks further back (to what the restored version itself had displaced) instead of flipping
back to it, and automatic decisions never re-promote it (only `promote` can).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from tuneline.errors import UserError
from tuneline.home import redact_uri
from tuneline.registry import tags as T
from tuneline.registry.lock import DEFAULT_LOCK_TIMEOUT_S, registry_lock
from tuneline.registry.register import RetryingClient, delete_version_tags, search_versions, set_version_tags

LINEAGE_KEYS = (
    "git.commit",
    "git.dirty",
    "config.sha256",
    "mlflow_run_id",
    "zenml.run_id",
    "zenml.pipeline_run",
    "base_model",
    "base_model.revision",
    "method",
    "data.sources",
    "hardware",
    "train.wall_time_s",
    T.WEIGHTS_SHA256,
)


@dataclass
class VersionInfo:
    """One registered version as the operator sees it."""

    version: str
    created: datetime
    aliases: list[str]
    metrics: dict[str, float]
    eval_fingerprint: str | None
    decision: str | None
    decision_reason: str | None
    run_id: str | None
    source: str
    lineage: dict[str, str]
    tags: dict[str, str] = field(repr=False)


@dataclass
class OperationResult:
    model_name: str
    action: str  # "promote" | "rollback"
    champion: str  # the version holding @champion afterwards
    previous_champion: str | None  # the version holding @previous-champion afterwards
    replaced: str | None  # the version that held @champion before
    changed: bool
    message: str


def _client_uri(client: Any, registry_uri: str | None) -> str:
    if registry_uri:
        return registry_uri
    import mlflow

    return mlflow.get_registry_uri()


def _registered_model(client: Any, name: str, registry_uri: str | None) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(name)
    except MlflowException as e:
        if getattr(e, "error_code", None) != "RESOURCE_DOES_NOT_EXIST":
            raise
        uri = redact_uri(_client_uri(client, registry_uri))
        raise UserError(
            f"no registered model '{name}' in the registry at {uri}: check registry.model_name in the "
            "config, and that MLFLOW_TRACKING_URI / tracking.mlflow_tracking_uri points at "
            "the registry the pipeline wrote to"
        ) from e


def _model_version(client: Any, name: str, version: str) -> Any:
    from mlflow.exceptions import MlflowException

    if not str(version).isdigit():
        raise UserError(
            f"version must be a number like 3 (got '{version}'); list them with `python run.py models {name}`"
        )
    try:
        return client.get_model_version(name, str(version))
    except MlflowException as e:
        if getattr(e, "error_code", None) != "RESOURCE_DOES_NOT_EXIST":
            raise
        known = ", ".join(str(mv.version) for mv in search_versions(client, name)) or "none"
        raise UserError(f"'{name}' has no version {version} (versions: {known})") from e


def _aliases(rm: Any) -> dict[str, str]:
    return {alias: str(v) for alias, v in (rm.aliases or {}).items()}


def list_versions(client: Any, name: str, *, registry_uri: str | None = None) -> list[VersionInfo]:
    """Every version of `name`, newest first, with aliases, scores, decision and lineage."""
    rc = RetryingClient(client)
    rm = _registered_model(rc, name, registry_uri)
    by_version: dict[str, list[str]] = {}
    for alias, version in sorted(_aliases(rm).items()):
        by_version.setdefault(version, []).append(alias)
    out = []
    for mv in search_versions(rc, name):
        tags = dict(mv.tags or {})
        metrics = {}
        for k, v in tags.items():
            if k.startswith(T.METRIC_PREFIX):
                score = T.parse_score(v)
                if score is not None:
                    metrics[k.removeprefix(T.METRIC_PREFIX)] = score
        out.append(
            VersionInfo(
                version=str(mv.version),
                created=datetime.fromtimestamp((mv.creation_timestamp or 0) / 1000, tz=UTC),
                aliases=by_version.get(str(mv.version), []),
                metrics=metrics,
                eval_fingerprint=tags.get(T.EVAL_FINGERPRINT),
                decision=tags.get(T.DECISION),
                decision_reason=tags.get(T.DECISION_REASON),
                run_id=mv.run_id,
                source=mv.source,
                lineage={k: tags[k] for k in LINEAGE_KEYS if k in tags},
                tags=tags,
            )
        )
    return out


def history(client: Any, name: str, *, registry_uri: str | None = None) -> list[dict[str, Any]]:
    """The registered model's change events, oldest first."""
    rm = _registered_model(RetryingClient(client), name, registry_uri)
    events = []
    for key in sorted(k for k in (rm.tags or {}) if k.startswith(T.HISTORY_PREFIX)):
        try:
            events.append(json.loads(rm.tags[key]))
        except json.JSONDecodeError:
            events.append({"raw": rm.tags[key]})
    return events


def _bump_epoch(client: Any, name: str, rm: Any) -> str:
    current = (rm.tags or {}).get(T.EPOCH, "0")
    nxt = str(int(current) + 1 if current.isdigit() else 1)
    client.set_registered_model_tag(name, T.EPOCH, nxt)
    return nxt


def _require_text(value: str, what: str) -> str:
    value = (value or "").strip()
    if not value:
        raise UserError(f"{what} is required: say who made the change and why (it is kept in the history)")
    return value


def promote(
    client: Any,
    name: str,
    version: str | int,
    *,
    reason: str,
    who: str,
    aliases: T.Aliases | None = None,
    registry_uri: str | None = None,
    lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
) -> OperationResult:
    """Make `version` the champion by hand; the current one becomes `@previous-champion`."""
    aliases = aliases or T.Aliases()
    reason, who = _require_text(reason, "reason"), _require_text(who, "who")
    version = str(version)
    rc = RetryingClient(client)
    with registry_lock(_client_uri(client, registry_uri), timeout_s=lock_timeout_s):
        rm = _registered_model(rc, name, registry_uri)
        mv = _model_version(rc, name, version)
        current = _aliases(rm)
        holder = current.get(aliases.champion)
        if holder == version:
            return OperationResult(
                name,
                "promote",
                version,
                current.get(aliases.previous),
                holder,
                False,
                f"v{version} already holds @{aliases.champion}; nothing changed",
            )
        epoch = _bump_epoch(rc, name, rm)
        now = T.now_utc()
        delete_version_tags(rc, name, version, dict(mv.tags or {}), (*T.ROLLED_BACK_KEYS, *T.DISPLACED_KEYS))
        set_version_tags(
            rc,
            name,
            version,
            {
                T.CHAMPION_SINCE: now,
                T.CHAMPION_BY: who,
                T.CHAMPION_REASON: f"promoted by hand: {reason}",
                T.CHAMPION_PREVIOUS: holder or "",
            },
        )
        if holder is not None:
            set_version_tags(
                rc,
                name,
                holder,
                {
                    T.DISPLACED_AT: now,
                    T.DISPLACED_BY: who,
                    T.DISPLACED_REASON: f"v{version} promoted by hand: {reason}",
                    T.DISPLACED_FOR: version,
                },
            )
            rc.set_registered_model_alias(name, aliases.previous, holder)
        rc.set_registered_model_alias(name, aliases.champion, version)
        if current.get(aliases.challenger) == version:
            rc.delete_registered_model_alias(name, aliases.challenger)
        key, value = T.history_event("promote", who, reason, version=version, previous=holder, epoch=epoch)
        rc.set_registered_model_tag(name, key, value)
    previous = holder if holder is not None else current.get(aliases.previous)
    return OperationResult(
        name,
        "promote",
        version,
        previous,
        holder,
        True,
        f"v{version} is now @{aliases.champion}"
        + (f"; v{holder} is @{aliases.previous}" if holder else " (there was no champion before)"),
    )


def rollback(
    client: Any,
    name: str,
    *,
    reason: str,
    who: str,
    aliases: T.Aliases | None = None,
    registry_uri: str | None = None,
    lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
) -> OperationResult:
    """Move `@champion` back to `@previous-champion`; `@previous-champion` then moves one step
    further back (to what the restored version had displaced) or is removed."""
    aliases = aliases or T.Aliases()
    reason, who = _require_text(reason, "reason"), _require_text(who, "who")
    rc = RetryingClient(client)
    with registry_lock(_client_uri(client, registry_uri), timeout_s=lock_timeout_s):
        rm = _registered_model(rc, name, registry_uri)
        current = _aliases(rm)
        holder, target = current.get(aliases.champion), current.get(aliases.previous)
        if target is None:
            raise UserError(
                f"'{name}' has no @{aliases.previous} to roll back to"
                + (f" (@{aliases.champion} is v{holder})" if holder else " and no champion")
                + f": pick the version to serve with `python run.py promote {name} <version> --reason ...` "
                f"(see `python run.py models {name}` for the candidates)"
            )
        target_mv = _model_version(rc, name, target)
        epoch = _bump_epoch(rc, name, rm)
        now = T.now_utc()
        if holder is not None and holder != target:
            set_version_tags(
                rc, name, holder, {T.ROLLED_BACK_AT: now, T.ROLLED_BACK_BY: who, T.ROLLED_BACK_REASON: reason}
            )
        target_tags = dict(target_mv.tags or {})
        delete_version_tags(rc, name, target, target_tags, T.DISPLACED_KEYS)
        set_version_tags(
            rc,
            name,
            target,
            {
                T.CHAMPION_SINCE: now,
                T.CHAMPION_BY: who,
                T.CHAMPION_REASON: f"rolled back from v{holder}: {reason}"
                if holder
                else f"rollback: {reason}",
            },
        )
        rc.set_registered_model_alias(name, aliases.champion, target)
        further = _rollback_target(rc, name, target_tags.get(T.CHAMPION_PREVIOUS), exclude={holder, target})
        if further is not None:
            rc.set_registered_model_alias(name, aliases.previous, further)
        else:
            rc.delete_registered_model_alias(name, aliases.previous)
        key, value = T.history_event(
            "rollback", who, reason, version=target, previous=holder, previous_alias=further, epoch=epoch
        )
        rc.set_registered_model_tag(name, key, value)
    return OperationResult(
        name,
        "rollback",
        target,
        further,
        holder,
        True,
        f"v{target} is now @{aliases.champion}"
        + (f" (v{holder} rolled back)" if holder else "")
        + (f"; @{aliases.previous} is v{further}" if further else f"; no @{aliases.previous} left"),
    )


def _rollback_target(client: Any, name: str, candidate: str | None, exclude: set[str | None]) -> str | None:
    """`candidate` if it still exists and was never rolled back, else None."""
    from mlflow.exceptions import MlflowException

    if not candidate or candidate in exclude:
        return None
    try:
        tags = client.get_model_version(name, candidate).tags or {}
    except MlflowException:
        return None
    return None if T.ROLLED_BACK_AT in tags else candidate


def _cell(value: Any, width: int) -> str:
    text = "" if value is None else str(value)
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"


def _why(v: VersionInfo, aliases: T.Aliases) -> str | None:
    """What explains a version's state: how the champion got there, why one was rolled back,
    otherwise the automatic decision."""
    if aliases.champion in v.aliases:
        return v.tags.get(T.CHAMPION_REASON) or v.decision_reason
    if T.ROLLED_BACK_AT in v.tags:
        return f"rolled back by {v.tags.get(T.ROLLED_BACK_BY, '?')}: {v.tags.get(T.ROLLED_BACK_REASON, '')}"
    return v.decision_reason


def format_versions(
    model_name: str,
    versions: Sequence[VersionInfo],
    *,
    metrics: Sequence[str] | None = None,
    aliases: T.Aliases | None = None,
    reason_width: int = 60,
) -> str:
    """The table `python run.py models NAME` prints: one line per version, newest first, then a legend.

    `metrics`: the score columns (the deciding metric first); default every metric recorded.
    """
    aliases = aliases or T.Aliases()
    if metrics is None:
        metrics = sorted({m for v in versions for m in v.metrics})
    holders: dict[str, str] = {}
    for v in versions:
        for a in v.aliases:
            holders[a] = v.version
    head = [f"{model_name}: {len(versions)} version{'s' if len(versions) != 1 else ''}"]
    for alias in (aliases.champion, aliases.previous, aliases.challenger):
        head.append(f"@{alias} v{holders[alias]}" if alias in holders else f"@{alias} -")
    header = [
        "version",
        "aliases",
        "created (UTC)",
        *metrics,
        "eval set",
        "decision",
        "git",
        "weights",
        "reason",
    ]
    rows = []
    for v in versions:
        commit = v.lineage.get("git.commit", "")
        git = commit[:8] if commit and commit != "unknown" else (commit or "")
        if v.lineage.get("git.dirty") == "true":
            git += "+dirty"
        decision = v.decision or ""
        if T.ROLLED_BACK_AT in v.tags:
            decision = "rolled-back"
        rows.append(
            [
                f"v{v.version}",
                ",".join(v.aliases) or "-",
                v.created.strftime("%Y-%m-%d %H:%M"),
                *[f"{v.metrics[m]:.4f}" if m in v.metrics else "-" for m in metrics],
                (v.eval_fingerprint or "-")[:8],
                decision or "-",
                git or "-",
                v.lineage.get(T.WEIGHTS_SHA256, "-")[:12],
                _cell(_why(v, aliases), reason_width) or "-",
            ]
        )
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(head)]
    for r in [header, *rows]:
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return "\n".join(lines)


def format_history(events: Sequence[Mapping[str, Any]]) -> str:
    """One line per event, oldest first: `<at>  <action>  v<version>  by <who>: <reason>`."""
    lines = []
    for e in events:
        version = f"v{e['version']}" if e.get("version") else "-"
        extra = f" (was v{e['previous']})" if e.get("previous") else ""
        outcome = f" -> {e['outcome']}" if e.get("outcome") else ""
        lines.append(
            f"{e.get('at', '?')}  {e.get('action', '?'):<9} {version}{outcome}{extra}  by {e.get('who', '?')}: {e.get('reason', '')}"
        )
    return "\n".join(lines)
