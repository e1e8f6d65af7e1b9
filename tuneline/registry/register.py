"""Register a trained model once, decide champion or challenger, and leave the registry consistent.

`register_and_decide` is the whole automatic path, in this order:

1. Find the version that already holds these weights (tag `weights.sha256`), so an eval-only
   change re-evaluates that version instead of registering the same weights twice.
2. Read the champion *now* and compare on this eval set: the champion's re-scored result from
   the evaluation step, or its recorded score on the same set; with no champion, the base.
3. Create the version with lineage, scores (full precision, under the eval-set fingerprint) and
   the decision in one write, or write them onto the reused version.
4. Move the aliases (`@champion` + `@previous-champion`, or `@challenger`).
5. Verify (set-then-verify): re-read the aliases and the competing versions' recorded scores
   and repair `@champion` so the best eligible version holds it.

On a local store (SQLite file, file store) steps 1-5 run under a file lock, so concurrent runs
are serialised and step 5 finds nothing to repair. A server has no shared lock; there two runs
can both pass step 2, and step 5 is what makes the better one win. Eligible for step 5: versions
decided `champion` automatically in the current epoch (every manual promote or rollback starts
a new one, so automation never undoes a person's choice), not displaced since, not rolled back,
with a score on this eval set. Step 5 also marks every eligible version but the best as displaced
by it: a run that lost such a race may have finished before the winner even registered, or may
read `@champion` only after the winner took it, so whichever run verifies must say why the
loser holds no alias.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from tuneline.registry import tags as T
from tuneline.registry.lock import (
    DEFAULT_LOCK_TIMEOUT_S,
    is_transient,
    is_upsert_race,
    registry_lock,
    retry_locked,
)
from tuneline.registry.promotion import Decision, PromotionPolicy, Scored, Significance, decide

log = logging.getLogger("tuneline")

VERIFY_ROUNDS = 4
VERIFY_PAUSE_S = 0.2


class RetryingClient:
    """An MlflowClient whose calls are retried while the store is busy ("database is locked"), and
    whose `set_*` upserts are also retried when a concurrent writer inserted the same key first."""

    def __init__(self, client: Any):
        self._client = client

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        retry_if = (
            (lambda e: is_transient(e) or is_upsert_race(e)) if name.startswith("set_") else is_transient
        )

        def call(*args: Any, **kwargs: Any) -> Any:
            return retry_locked(lambda: attr(*args, **kwargs), retry_if=retry_if)

        return call


def _error_code(exc: BaseException) -> str | None:
    return getattr(exc, "error_code", None)


def ensure_registered_model(client: Any, name: str, description: str = "Fine-tuned with tuneline") -> Any:
    """The registered model, created if missing; a concurrent creator winning the race is fine."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(name)
    except MlflowException as e:
        if _error_code(e) != "RESOURCE_DOES_NOT_EXIST":
            raise
    try:
        client.create_registered_model(name, description=description)
    except MlflowException as e:
        if _error_code(e) != "RESOURCE_ALREADY_EXISTS":
            raise
    return client.get_registered_model(name)


def _quote(value: str) -> str:
    return "'" + value.replace("'", "\\'") + "'"


def search_versions(client: Any, name: str, **tag_equals: str) -> list[Any]:
    """All versions of `name` (optionally with tags equal to values), every page, newest first."""
    clauses = [f"name = {_quote(name)}"] + [f"tags.`{k}` = {_quote(v)}" for k, v in tag_equals.items()]
    out, token = [], None
    while True:
        page = client.search_model_versions(" and ".join(clauses), page_token=token)
        out.extend(page)
        token = getattr(page, "token", None)
        if not token:
            break
    return sorted(out, key=lambda mv: int(mv.version), reverse=True)


def find_version_by_weights(client: Any, name: str, weights_sha256: str) -> Any | None:
    """The oldest version holding these weights: the one every later registration reuses."""
    found = search_versions(client, name, **{T.WEIGHTS_SHA256: weights_sha256})
    return found[-1] if found else None


@dataclass(frozen=True)
class Candidate:
    """A trained model ready to register, with its scores on this run's eval set."""

    source: str  # artifact URI of the model directory (what `download_model_version` fetches)
    run_id: str | None  # the MLflow run that logged it
    weights_sha256: str  # `weights.weights_sha256(model_dir)`
    scores: Scored  # the candidate on this eval set (version=None)
    base: Scored | None = None  # the base model on the same eval set, when it was scored
    lineage: Mapping[str, str] = field(default_factory=dict)  # `lineage.lineage_tags(...)`
    description: str | None = None


@dataclass
class RegistrationResult:
    model_name: str
    version: str
    created: bool  # False: these weights were already registered and that version was reused
    decision: Decision
    champion: str | None  # who holds `@champion` after the decision (and any repair)
    previous_champion: str | None  # the version this one displaced, when it became champion
    serialised: bool  # True when a file lock serialised the decision (local store)

    @property
    def promoted(self) -> bool:
        return self.decision.promoted and self.champion == self.version

    def as_dict(self) -> dict[str, Any]:
        """Plain data for a step output or a JSON log line."""
        d = asdict(self)
        d["decision"] = {k: v for k, v in asdict(self.decision).items() if k != "extra"}
        d["promoted"] = self.promoted
        d["model_uri"] = f"models:/{self.model_name}/{self.version}"
        return d


def score_tags(scored: Scored, *, own: bool) -> dict[str, str]:
    """`scored` under its eval fingerprint. `own`: it is the version's latest evaluation, so the
    plain `metric.*` tags and `eval.fingerprint` follow it too."""
    tags = {
        T.eval_score_key(scored.eval_fingerprint, m): T.format_score(v) for m, v in scored.metrics.items()
    }
    if own:
        tags.update({f"{T.METRIC_PREFIX}{m}": T.format_score(v) for m, v in scored.metrics.items()})
        tags[T.EVAL_FINGERPRINT] = scored.eval_fingerprint
    return tags


def record_scores(client: Any, name: str, version: str, scored: Scored, *, own: bool) -> None:
    set_version_tags(client, name, version, score_tags(scored, own=own))


def recorded_scores(tags: Mapping[str, str], version: str, eval_fp: str, metrics: list[str]) -> Scored | None:
    """A version's recorded scores on eval set `eval_fp`, or None when it was never scored on it."""
    found = {}
    for metric in metrics:
        value = T.parse_score(tags.get(T.eval_score_key(eval_fp, metric)))
        if value is not None:
            found[metric] = value
    return Scored(found, eval_fp, version) if found else None


def _policy_metrics(policy: PromotionPolicy) -> list[str]:
    return [m for m in (policy.metric, policy.tie_break) if m]


def set_version_tags(client: Any, name: str, version: str, tags: Mapping[str, str]) -> None:
    """One call per tag: MLflow has no batch setter for model version tags."""
    for k, v in tags.items():
        client.set_model_version_tag(name, version, k, v)


def delete_version_tags(
    client: Any, name: str, version: str, present: Mapping[str, str], keys: tuple[str, ...]
) -> None:
    for k in keys:
        if k in present:
            client.delete_model_version_tag(name, version, k)


def _append_history(client: Any, name: str, action: str, who: str, reason: str, **fields: Any) -> None:
    key, value = T.history_event(action, who, reason, **fields)
    client.set_registered_model_tag(name, key, value)


def _aliases_of(rm: Any) -> dict[str, str]:
    return {alias: str(v) for alias, v in (rm.aliases or {}).items()}


def _version_tags(client: Any, name: str, version: str) -> dict[str, str]:
    return dict(client.get_model_version(name, version).tags or {})


def champion_on_eval_set(
    client: Any, name: str, eval_fp: str, policy: PromotionPolicy, aliases: T.Aliases | None = None
) -> tuple[Any | None, Scored | None]:
    """What the evaluation step needs before deciding: the champion's ModelVersion and its recorded
    scores on eval set `eval_fp`.

    (None, None): no registered model or no champion. (mv, None): the champion was never scored
    on this eval set: score `models:/<name>/<mv.version>` on it and pass the result to
    `register_and_decide(champion_rescored=...)`; otherwise its recorded scores are comparable.
    """
    from mlflow.exceptions import MlflowException

    aliases = aliases or T.Aliases()
    rc = RetryingClient(client)
    try:
        mv = rc.get_model_version_by_alias(name, aliases.champion)
    except MlflowException as e:
        if _error_code(e) not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise
        return None, None
    version = str(mv.version)
    return mv, recorded_scores(dict(mv.tags or {}), version, eval_fp, _policy_metrics(policy))


def register_and_decide(
    client: Any,
    model_name: str,
    candidate: Candidate,
    policy: PromotionPolicy,
    *,
    registry_uri: str | None = None,
    aliases: T.Aliases | None = None,
    champion_rescored: Scored | None = None,
    significance: Significance | bool | None = None,
    promote: bool = True,
    who: str | None = None,
    lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
) -> RegistrationResult:
    """Register `candidate` (or reuse the version with the same weights) and decide its alias.

    `champion_rescored`: the champion the evaluation step saw, scored on this eval set (None when
    there was none). `significance`: the paired bootstrap of candidate vs that same reference
    (the champion, else the base). `promote=False` records the decision but never moves
    `@champion` (`registry.promote: false`). `registry_uri` defaults to MLflow's current one.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    aliases = aliases or T.Aliases()
    uri = registry_uri or mlflow.get_registry_uri()
    who = who or f"tuneline (MLflow run {candidate.run_id})"
    rc = RetryingClient(client)
    with registry_lock(uri, timeout_s=lock_timeout_s) as serialised:
        ensure_registered_model(rc, model_name)
        if champion_rescored is not None and champion_rescored.version is not None:
            try:
                record_scores(rc, model_name, champion_rescored.version, champion_rescored, own=False)
            except MlflowException as e:  # the champion the evaluation saw may have been deleted since
                if _error_code(e) != "RESOURCE_DOES_NOT_EXIST":
                    raise
        existing = find_version_by_weights(rc, model_name, candidate.weights_sha256)
        rm = rc.get_registered_model(model_name)
        epoch = (rm.tags or {}).get(T.EPOCH, "0")
        holder = _aliases_of(rm).get(aliases.champion)
        version = None if existing is None else str(existing.version)
        own_tags = {} if existing is None else dict(existing.tags or {})
        decision = _decide_against_holder(
            rc, model_name, version, holder, candidate, policy, champion_rescored, significance, own_tags
        )
        if decision.promoted and not promote:
            decision = _as_challenger(
                decision, f"registry.promote is false; the gate passed: {decision.reason}"
            )
        takes_alias = decision.promoted and (version is None or holder != version)
        tags = {**score_tags(candidate.scores, own=True), **decision.tags()}
        tags.update(
            {T.DECISION_PREVIOUS_CHAMPION: holder or "", T.DECISION_EPOCH: epoch, T.DECISION_AT: T.now_utc()}
        )
        if takes_alias:
            tags.update(
                {
                    T.CHAMPION_SINCE: T.now_utc(),
                    T.CHAMPION_BY: who,
                    T.CHAMPION_REASON: decision.reason,
                    T.CHAMPION_PREVIOUS: holder or "",
                }
            )
        version, created = _write_version(rc, model_name, candidate, existing, tags, dedupe=not serialised)
        if takes_alias:
            _move_champion(rc, model_name, version, holder, aliases, who, decision.reason)
        elif not decision.promoted and holder != version:
            rc.set_registered_model_alias(model_name, aliases.challenger, version)
        _append_history(
            rc,
            model_name,
            "decision",
            who,
            decision.reason,
            version=version,
            outcome=decision.outcome,
            previous=holder,
            created=created,
        )
        champion = holder
        if decision.promoted:
            champion = verify_champion(
                rc,
                model_name,
                policy,
                candidate.scores.eval_fingerprint,
                epoch=epoch,
                observed=holder,
                own=version,
                aliases=aliases,
                who=who,
            )
            if champion != version:
                log.warning(
                    "%s v%s passed the gate, but a concurrent decision holds @%s: v%s",
                    model_name,
                    version,
                    aliases.champion,
                    champion,
                )
    previous = holder if takes_alias else None
    log.info(
        "%s v%s (%s): %s: %s",
        model_name,
        version,
        "new version" if created else "same weights as before, version reused",
        decision.outcome,
        decision.reason,
    )
    return RegistrationResult(
        model_name, version, created, decision, champion, previous, serialised=bool(serialised)
    )


def _write_version(
    client: Any,
    name: str,
    candidate: Candidate,
    existing: Any | None,
    tags: Mapping[str, str],
    *,
    dedupe: bool,
) -> tuple[str, bool]:
    """Write `tags` onto the reused version, or create the version with lineage and `tags` in one
    call, so it is never visible half-tagged. Returns (version, created)."""

    def retag(mv: Any) -> str:
        version = str(mv.version)
        delete_version_tags(client, name, version, dict(mv.tags or {}), (*T.DISPLACED_KEYS, T.DECISION_NOTE))
        set_version_tags(client, name, version, tags)
        return version

    if existing is not None:
        return retag(existing), False
    all_tags = {**candidate.lineage, T.WEIGHTS_SHA256: candidate.weights_sha256, **tags}
    mv = client.create_model_version(
        name=name,
        source=candidate.source,
        run_id=candidate.run_id,
        tags={k: str(v) for k, v in all_tags.items()},
        description=candidate.description,
    )
    version = str(mv.version)
    if dedupe:
        # Without a lock, two runs with the same weights can both miss the search: the oldest
        # version stays and the newer ones remove their duplicate (it holds no alias yet).
        oldest = find_version_by_weights(client, name, candidate.weights_sha256)
        if oldest is not None and str(oldest.version) != version:
            client.delete_model_version(name, version)
            return retag(oldest), False
    return version, True


def _as_challenger(decision: Decision, reason: str) -> Decision:
    return Decision(
        "challenger",
        reason,
        decision.metric,
        decision.candidate_score,
        decision.reference,
        decision.reference_score,
        decision.min_margin,
        decision.significance,
        dict(decision.extra),
    )


def _decide_against_holder(
    client: Any,
    name: str,
    version: str | None,
    holder: str | None,
    candidate: Candidate,
    policy: PromotionPolicy,
    champion_rescored: Scored | None,
    significance: Significance | bool | None,
    own_tags: Mapping[str, str],
) -> Decision:
    fp = candidate.scores.eval_fingerprint
    if T.ROLLED_BACK_AT in own_tags:
        return _as_challenger(
            decide(candidate.scores, None, policy, None),
            f"v{version} was rolled back by {own_tags.get(T.ROLLED_BACK_BY, '?')} at "
            f"{own_tags[T.ROLLED_BACK_AT]} ({own_tags.get(T.ROLLED_BACK_REASON, '')}); automation never "
            "re-promotes it: promote it by hand if that is intended",
        )
    if holder is None:
        return decide(candidate.scores, candidate.base, policy, significance)
    if holder == version:
        decision = decide(candidate.scores, None, policy, None)
        return Decision(
            "champion",
            f"v{version} already holds the champion alias: these weights were registered before and were "
            "only re-evaluated",
            policy.metric,
            decision.candidate_score,
            f"v{version}",
            decision.candidate_score,
            policy.min_margin,
        )
    reference = None
    if (
        champion_rescored is not None
        and champion_rescored.version == holder
        and champion_rescored.eval_fingerprint == fp
    ):
        reference = champion_rescored
    else:
        reference = recorded_scores(_version_tags(client, name, holder), holder, fp, _policy_metrics(policy))
    if reference is None:
        return _as_challenger(
            decide(candidate.scores, None, policy, None),
            f"champion v{holder} has no {policy.metric} on this eval set ({fp}); it is not comparable: "
            "re-run evaluation, which re-scores the current champion",
        )
    return decide(candidate.scores, reference, policy, significance)


def _move_champion(
    client: Any, name: str, version: str, holder: str | None, aliases: T.Aliases, who: str, reason: str
) -> None:
    """Tag the displaced champion, then move the aliases: `@previous-champion` first, so a rollback
    target exists before the new champion is visible."""
    if holder is not None:
        set_version_tags(
            client,
            name,
            holder,
            {
                T.DISPLACED_AT: T.now_utc(),
                T.DISPLACED_BY: who,
                T.DISPLACED_REASON: reason,
                T.DISPLACED_FOR: version,
            },
        )
        client.set_registered_model_alias(name, aliases.previous, holder)
    client.set_registered_model_alias(name, aliases.champion, version)
    if _aliases_of(client.get_registered_model(name)).get(aliases.challenger) == version:
        client.delete_registered_model_alias(name, aliases.challenger)


def _eligible(client: Any, name: str, policy: PromotionPolicy, eval_fp: str, epoch: str) -> list[Scored]:
    out = []
    for mv in search_versions(client, name, **{T.DECISION: "champion", T.DECISION_EPOCH: epoch}):
        tags = dict(mv.tags or {})
        if T.DISPLACED_AT in tags or T.ROLLED_BACK_AT in tags:
            continue
        scored = recorded_scores(tags, str(mv.version), eval_fp, _policy_metrics(policy))
        if scored is not None and policy.metric in scored.metrics:
            out.append(scored)
    return out


def verify_champion(
    client: Any,
    name: str,
    policy: PromotionPolicy,
    eval_fp: str,
    *,
    epoch: str,
    observed: str | None,
    own: str | None = None,
    aliases: T.Aliases | None = None,
    who: str = "tuneline",
    rounds: int = VERIFY_ROUNDS,
    pause_s: float = VERIFY_PAUSE_S,
    sleep: Callable[[float], None] = time.sleep,
) -> str | None:
    """Re-read `@champion` after setting it, move it to the best eligible version if needed, and
    mark the other eligible versions as displaced by that one.

    `observed`: the holder this decision compared against; `own`: the version this decision
    wrote. The alias is only repaired while it is held by a competitor of this decision (an
    eligible version, `observed`, or `own`, which a competing run may already have marked as
    displaced before this run's alias write landed); a new epoch means a person promoted or
    rolled back meanwhile, and their choice stands. Marking the losers here, whichever run gets
    there first, is what makes the end state the same for every order of the racing runs.
    Returns the holder after verification.
    """
    aliases = aliases or T.Aliases()
    holder = None
    for _ in range(rounds):
        rm = client.get_registered_model(name)
        holder = _aliases_of(rm).get(aliases.champion)
        if (rm.tags or {}).get(T.EPOCH, "0") != epoch:
            return holder
        group = _eligible(client, name, policy, eval_fp, epoch)
        versions = {s.version for s in group}
        if holder is not None and holder not in versions and holder not in (observed, own):
            return holder
        if not group:
            return holder
        best = max(group, key=lambda s: (policy.sort_key(s.metrics), -int(s.version or 0)))
        reason = (
            f"concurrent decisions on eval set {eval_fp}: v{best.version} scores best on {policy.metric} "
            f"({best.metrics[policy.metric]:.4f})"
        )
        losers = [str(s.version) for s in group if s.version != best.version]
        if not losers and best.version == holder:
            return holder
        # Re-read the epoch just before writing: a person's promote or rollback since the read
        # above is never undone or relabelled.
        rm = client.get_registered_model(name)
        if (rm.tags or {}).get(T.EPOCH, "0") != epoch:
            return _aliases_of(rm).get(aliases.champion)
        _mark_displaced(client, name, losers, str(best.version), who, reason)
        if best.version == holder:
            return holder
        log.warning(
            "%s: @%s is v%s; repairing to v%s (%s)", name, aliases.champion, holder, best.version, reason
        )
        best_tags = _version_tags(client, name, str(best.version))
        previous = best_tags.get(T.CHAMPION_PREVIOUS) or None
        if previous and previous != best.version:
            client.set_registered_model_alias(name, aliases.previous, previous)
        client.set_registered_model_alias(name, aliases.champion, str(best.version))
        _append_history(client, name, "repair", who, reason, version=str(best.version), previous=holder)
        sleep(pause_s)
    return holder


def _mark_displaced(client: Any, name: str, losers: list[str], best: str, who: str, reason: str) -> None:
    """Tag `losers` as displaced by `best`, as a version that held `@champion` is when a better
    one takes it, so each says why it holds no alias although it passed the gate."""
    for loser in losers:
        set_version_tags(
            client,
            name,
            loser,
            {
                T.DISPLACED_AT: T.now_utc(),
                T.DISPLACED_BY: who,
                T.DISPLACED_REASON: reason,
                T.DISPLACED_FOR: best,
                T.DECISION_NOTE: f"superseded by v{best}: {reason}",
            },
        )
        _append_history(client, name, "displaced", who, reason, version=loser, for_version=best)
