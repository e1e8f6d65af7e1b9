"""The MLflow model registry, operated: register once per weights, gate promotion, promote,
roll back, and say where every version came from.

`promotion` is the pure gate (scores in, decision out), `register` the automatic path a
pipeline run takes (`register_and_decide`), `operations` what a person does (`list_versions`,
`promote`, `rollback`, `history`), `lineage` the tags that make a version reproducible,
`weights` the content hash that makes registration idempotent, `lock` the serialisation
that keeps concurrent runs from corrupting `@champion`. Importing this package imports
neither MLflow nor torch; they load when a function needs them.
"""

from tuneline.registry.lineage import (
    CONFIG_ARTIFACT,
    config_sha256,
    git_state,
    hardware_description,
    lineage_tags,
    loggable_config,
    package_versions,
)
from tuneline.registry.lock import lock_path, registry_lock, retry_locked
from tuneline.registry.operations import (
    OperationResult,
    VersionInfo,
    format_history,
    format_versions,
    history,
    list_versions,
    promote,
    rollback,
)
from tuneline.registry.promotion import (
    DEFAULT_TIE_BREAK,
    Decision,
    IncomparableScores,
    PromotionPolicy,
    Scored,
    Significance,
    decide,
    eval_fingerprint,
)
from tuneline.registry.register import (
    Candidate,
    RegistrationResult,
    champion_on_eval_set,
    find_version_by_weights,
    register_and_decide,
    verify_champion,
)
from tuneline.registry.tags import Aliases
from tuneline.registry.weights import weight_files, weights_sha256

__all__ = [
    "CONFIG_ARTIFACT",
    "DEFAULT_TIE_BREAK",
    "Aliases",
    "Candidate",
    "Decision",
    "IncomparableScores",
    "OperationResult",
    "PromotionPolicy",
    "RegistrationResult",
    "Scored",
    "Significance",
    "VersionInfo",
    "champion_on_eval_set",
    "config_sha256",
    "decide",
    "eval_fingerprint",
    "find_version_by_weights",
    "format_history",
    "format_versions",
    "git_state",
    "hardware_description",
    "history",
    "lineage_tags",
    "list_versions",
    "lock_path",
    "loggable_config",
    "package_versions",
    "promote",
    "register_and_decide",
    "registry_lock",
    "retry_locked",
    "rollback",
    "verify_champion",
    "weight_files",
    "weights_sha256",
]
