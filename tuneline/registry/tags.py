"""The tag and alias names tuneline writes on registered models and versions.

One place for them keeps the writer (registration, promote, rollback) and the readers
(the decision's re-check, `list_versions`, the CLI table) in agreement, and lets a
person reading the MLflow UI map a tag back to the code that wrote it.
"""

from __future__ import annotations

import json
import math
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

# Version tags written at registration.
METRIC_PREFIX = "metric."  # metric.<name>: the score on the version's own eval set, full precision
EVAL_FINGERPRINT = "eval.fingerprint"
WEIGHTS_SHA256 = "weights.sha256"

# The automatic decision, written once per evaluation of the version.
DECISION = "decision"  # "champion" | "challenger"
DECISION_REASON = "decision.reason"
DECISION_METRIC = "decision.metric"
DECISION_CANDIDATE = "decision.candidate_score"
DECISION_REFERENCE = "decision.reference"  # "base" | "v3" | "none"
DECISION_REFERENCE_SCORE = "decision.reference_score"
DECISION_MIN_MARGIN = "decision.min_margin"
DECISION_SIGNIFICANCE = "decision.significance"
DECISION_PREVIOUS_CHAMPION = "decision.previous_champion"
DECISION_EPOCH = "decision.epoch"
DECISION_AT = "decision.at"
DECISION_NOTE = "decision.note"

# Who made a version champion, when, why, and which version it displaced (rollback follows these).
CHAMPION_SINCE = "champion.since"
CHAMPION_BY = "champion.by"
CHAMPION_REASON = "champion.reason"
CHAMPION_PREVIOUS = "champion.previous"
DISPLACED_AT = "displaced.at"
DISPLACED_BY = "displaced.by"
DISPLACED_REASON = "displaced.reason"
DISPLACED_FOR = "displaced.for_version"
ROLLED_BACK_AT = "rolled_back.at"
ROLLED_BACK_BY = "rolled_back.by"
ROLLED_BACK_REASON = "rolled_back.reason"
DISPLACED_KEYS = (DISPLACED_AT, DISPLACED_BY, DISPLACED_REASON, DISPLACED_FOR)
ROLLED_BACK_KEYS = (ROLLED_BACK_AT, ROLLED_BACK_BY, ROLLED_BACK_REASON)

# Registered-model tags: a counter bumped by every manual promote/rollback (automatic decisions
# only ever compete with decisions of the same epoch), and one append-only event per change.
EPOCH = "tuneline.epoch"
HISTORY_PREFIX = "history."


@dataclass(frozen=True)
class Aliases:
    """The three aliases of one registered model. `champion` is `registry.alias`."""

    champion: str = "champion"

    @property
    def previous(self) -> str:
        return f"previous-{self.champion}"

    @property
    def challenger(self) -> str:
        return "challenger" if self.champion == "champion" else f"{self.champion}-challenger"


def eval_score_key(eval_fingerprint: str, metric: str) -> str:
    """eval.<fingerprint>.<metric>: a version's score on one eval set. A version holds one per eval
    set it was scored on, so a later run on the same set compares without re-scoring it."""
    return f"eval.{eval_fingerprint}.{metric}"


def format_score(value: float) -> str:
    """repr round-trips a float exactly; a rounded tag could flip a comparison read back later."""
    return repr(float(value))


def parse_score(raw: str | None) -> float | None:
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if not math.isnan(value) else None


def now_utc() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def history_event(action: str, who: str, reason: str, **fields: Any) -> tuple[str, str]:
    """(key, value) of one history entry. The key sorts by time and carries a random suffix, so two
    writers never overwrite each other's entry: appending needs no read-modify-write."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    key = f"{HISTORY_PREFIX}{stamp}.{secrets.token_hex(3)}"
    event = {"at": now_utc(), "action": action, "who": who, "reason": reason}
    event.update({k: v for k, v in fields.items() if v is not None})
    return key, json.dumps(event, sort_keys=True)
