"""The Optuna study behind a sweep: its database, its identity, and resuming it after a kill.

The study lives in a database (SQLite in TUNELINE_HOME unless the sweep names another, e.g.
PostgreSQL), so rerunning the same command continues it: trials that finished count, a trial
the kill left RUNNING is closed as failed (marked interrupted) and its values are queued
again, so it reruns first and its training is served from ZenML's cache if it had finished.

The sampler is rebuilt before every trial, seeded with the sweep seed plus the number of
trials that count so far: the values sampled depend only on the study's finished history, so
a sweep run in one go and one that was interrupted and resumed sample the same points.
"""

from __future__ import annotations

from typing import Any

from tuneline.errors import UserError
from tuneline.home import redact_uri, tuneline_home
from tuneline.sweep.pruning import PRUNED_ATTR, build_pruner
from tuneline.sweep.schema import Sweep

FINGERPRINT_ATTR = "tuneline.fingerprint"
INTERRUPTED_ATTR = "tuneline.interrupted"
RETRY_ATTR = "tuneline.retry_of"
PARENT_RUN_ATTR = "tuneline.mlflow_parent_run"


def default_storage() -> str:
    return f"sqlite:///{tuneline_home() / 'sweeps.db'}"


def storage_url(sweep: Sweep, cli_storage: str | None = None) -> str:
    """--storage, else the sweep file's `storage`, else SQLite in TUNELINE_HOME."""
    url = cli_storage or sweep.spec.storage or default_storage()
    if url.startswith("sqlite:///"):
        from pathlib import Path

        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return url


def open_storage(url: str) -> Any:
    import optuna
    from sqlalchemy.exc import SQLAlchemyError

    try:
        return optuna.storages.RDBStorage(url)
    except (SQLAlchemyError, ImportError, ValueError) as e:
        raise UserError(
            f"cannot open the sweep database {redact_uri(url)}: {str(e).splitlines()[0]} "
            "(check --storage or the sweep file's storage: key)"
        ) from e


def sampler(sweep: Sweep, n_trials_so_far: int) -> Any:
    import optuna

    return optuna.samplers.TPESampler(seed=sweep.spec.seed + n_trials_so_far)


def open_study(sweep: Sweep, storage: Any, fingerprint: str, study_name: str | None = None) -> Any:
    """Create the study or load it; a study made for another space, objective or base config
    is refused rather than mixed with this one."""
    import optuna

    name = study_name or sweep.study_name
    study = optuna.create_study(
        storage=storage,
        study_name=name,
        direction=sweep.direction,
        load_if_exists=True,
        sampler=sampler(sweep, 0),
        pruner=build_pruner(sweep.spec.pruner.model_dump()),
    )
    if study.direction.name.lower() != sweep.direction:
        raise UserError(
            f"study '{name}' maximizes/minimizes differently ({study.direction.name.lower()}) than "
            f"{sweep.path} ({sweep.direction}); pass --study NEW_NAME to start another"
        )
    recorded = study.user_attrs.get(FINGERPRINT_ATTR)
    if recorded is None:
        study.set_user_attr(FINGERPRINT_ATTR, fingerprint)
    elif recorded != fingerprint:
        raise UserError(
            f"study '{name}' in this database was run with another search space, objective or base "
            f"config than {sweep.path} with {sweep.config_path} now; its values would not compare. "
            "Pass --study NEW_NAME to start another study (or restore the earlier settings to continue)"
        )
    return study


def with_sampler(study: Any, sweep: Sweep) -> Any:
    """The same study, its sampler seeded for the next trial (see the module docstring)."""
    import optuna

    return optuna.load_study(
        study_name=study.study_name,
        storage=study._storage,
        sampler=sampler(sweep, finished_count(study)),
        pruner=study.pruner,
    )


def recover_interrupted(study: Any) -> list[int]:
    """Close the trials a killed sweep left RUNNING and queue their values again; returns their
    numbers. One sweep process per study at a time (the caller holds a lock)."""
    from optuna.trial import TrialState

    recovered = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study._storage.set_trial_user_attr(t._trial_id, INTERRUPTED_ATTR, True)
        study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
        if t.params:
            study.enqueue_trial(t.params, user_attrs={RETRY_ATTR: t.number}, skip_if_exists=False)
        recovered.append(t.number)
    return recovered


def counted(trial: Any) -> bool:
    """Whether a trial counts toward `trials`: finished, pruned, or failed on its own (a trial
    cut short by a kill does not: it is queued again)."""
    from optuna.trial import TrialState

    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return trial.state == TrialState.FAIL and not trial.user_attrs.get(INTERRUPTED_ATTR)


def finished_count(study: Any) -> int:
    return sum(counted(t) for t in study.get_trials(deepcopy=False))


def pruned_info(study: Any, number: int) -> dict | None:
    """What the train step recorded when it pruned trial `number`, or None."""
    trial = study.get_trials(deepcopy=False)[number]
    return trial.user_attrs.get(PRUNED_ATTR)
