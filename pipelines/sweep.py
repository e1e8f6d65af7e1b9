"""`run.py sweep`: an Optuna study whose trials are runs of the trial pipeline, then the normal
pipeline with the best values, which alone registers.

    parent MLflow run (tuneline.run_type=sweep): study settings, summary.json, the plot
      +- trial 0  (tuneline_sweep_trial run, child via mlflow.parentRunId)
      +- trial 1  ...
    then tuneline_sft with the best values: train/evaluate from the cache, register as usual

Each trial's config is the project config with the sweep's overrides, validated by
`load_config` like `--set`. The trial reaches the pruning callback in the train step through
`TUNELINE_SWEEP_TRIAL` (see `tuneline.sweep.pruning`), never through a step input, so every
step's cache key is the one a plain run of the same config has.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.runner import RunSummary, format_summary, pipeline_for, run_pipeline
from tuneline.config import ProjectConfig, load_config
from tuneline.errors import ConfigError, TunelineError, UserError
from tuneline.home import mlflow_tracking_uri, redact_uri, tuneline_home
from tuneline.sweep import pruning, space
from tuneline.sweep import study as studies
from tuneline.sweep.schema import Sweep, load_sweep
from tuneline.sweep.summary import format_study, parallel_coordinates, study_summary

log = logging.getLogger("tuneline")

TRIAL_PIPELINE = ("pipelines.sweep_trial", "sweep_trial_pipeline")
STUDY_TAG = "tuneline.sweep.study"
TRIAL_TAG = "tuneline.sweep.trial"
STATE_TAG = "tuneline.sweep.state"


@dataclass
class SweepResult:
    summary: dict[str, Any]
    new_trials: list[int] = field(default_factory=list)
    recovered: list[int] = field(default_factory=list)
    parent_run_id: str = ""
    final: RunSummary | None = None
    storage: str = ""
    wall_s: float = 0.0


def run_sweep(
    config_path: str,
    sweep_path: str,
    *,
    overrides: list[str] | None = None,
    trials: int | None = None,
    storage: str | None = None,
    study_name: str | None = None,
    enable_cache: bool = True,
) -> SweepResult:
    """Run the study up to `trials` finished trials (resuming a stored one), then the final run."""
    from tuneline.cli import preflight

    t0 = time.perf_counter()
    sweep = load_sweep(sweep_path, config_path, overrides)
    if study_name:
        sweep.spec.study_name = study_name
    base_cfg = load_config(config_path, sweep.base_overrides)
    fingerprints, _ = preflight(base_cfg)
    target = trials or sweep.spec.trials
    url = studies.storage_url(sweep, storage)
    if base_cfg.train.eval_steps is None and sweep.spec.pruner.type != "none":
        log.warning(
            "train.eval_steps is not set: trials report no eval loss while training, so none is pruned"
        )
    with _study_lock(url, sweep.study_name):
        study = studies.open_study(sweep, studies.open_storage(url), sweep.fingerprint())
        recovered = studies.recover_interrupted(study)
        if recovered:
            log.info("trials %s were interrupted; their values run again first", recovered)
        experiment, client = _tracking(base_cfg)
        parent = _parent_run(client, study, sweep, experiment, url)
        result = SweepResult(summary={}, recovered=recovered, parent_run_id=parent, storage=redact_uri(url))
        while studies.finished_count(study) < target:
            study = studies.with_sampler(study, sweep)
            trial = study.ask(space.distributions(sweep.params))
            result.new_trials.append(trial.number)
            _run_trial(study, trial, sweep, fingerprints, parent, url, experiment, client, enable_cache)
        result.summary = study_summary(
            study.study_name, sweep.metric, sweep.direction, study.get_trials(deepcopy=False)
        )
        _log_parent(client, parent, sweep, result.summary, target)
        best = result.summary["best"]
        if best is None:
            client.set_terminated(parent, "FAILED")
            raise TunelineError(
                "\n".join(format_study(result.summary))
                + "\n\nno trial completed, so nothing was registered; the failures are logged above "
                "and stored with each trial (user attribute tuneline.error)"
            )
        best_cfg = space.trial_config(sweep, best["params"])
        result.final = run_pipeline(
            best_cfg,
            fingerprints,
            enable_cache=enable_cache,
            run_tags={
                "tuneline.run_type": "training",
                STUDY_TAG: study.study_name,
                TRIAL_TAG: str(best["number"]),
            },
        )
        _record_final(client, parent, result.final)
        client.set_terminated(parent, "FINISHED")
    result.wall_s = time.perf_counter() - t0
    return result


def _run_trial(
    study: Any,
    trial: Any,
    sweep: Sweep,
    fingerprints: dict[str, str],
    parent: str,
    url: str,
    experiment: str,
    client: Any,
    enable_cache: bool,
) -> None:
    """One trial: its config, the trial pipeline, then the outcome told to the study and recorded
    on its MLflow child run. A trial that fails (a diverging learning rate, a value the config
    refuses) is recorded and the study goes on; an interrupt leaves it RUNNING for a resume."""
    from optuna.trial import TrialState

    values = dict(trial.params)
    log.info("sweep trial %d: %s", trial.number, space.describe(values))
    try:
        cfg = space.trial_config(sweep, values)
    except ConfigError as e:
        trial.set_user_attr("tuneline.error", str(e)[:1000])
        study.tell(trial.number, state=TrialState.FAIL)
        log.warning("sweep trial %d: config refused: %s", trial.number, e)
        return
    tags = {
        "tuneline.run_type": "sweep_trial",
        "mlflow.parentRunId": parent,
        STUDY_TAG: study.study_name,
        TRIAL_TAG: str(trial.number),
    }
    os.environ[pruning.ENV] = pruning.trial_spec(
        url, study.study_name, trial._trial_id, trial.number, sweep.spec.pruner.model_dump(), sweep.maximize
    )
    try:
        summary = run_pipeline(
            cfg, fingerprints, enable_cache=enable_cache, pipeline=TRIAL_PIPELINE, run_tags=tags
        )
    except TunelineError as e:
        pruned = studies.pruned_info(study, trial.number)
        run_id = _child_run(client, experiment, parent, trial.number)
        if pruned is not None:
            study.tell(trial.number, state=TrialState.PRUNED)
            log.info("sweep trial %d pruned at step %s", trial.number, pruned.get("step"))
            _record_child(client, run_id, trial.number, values, "pruned", None, sweep.metric)
            if run_id:
                client.set_terminated(run_id, "KILLED")  # stopped on purpose, not a failure
            _discard_checkpoints(cfg, fingerprints)
        else:
            trial.set_user_attr("tuneline.error", str(e)[:1000])
            study.tell(trial.number, state=TrialState.FAIL)
            cause = f" ({type(e.__cause__).__name__}: {e.__cause__})" if e.__cause__ is not None else ""
            log.warning("sweep trial %d failed: %s%s", trial.number, e, cause[:2000])
            _record_child(client, run_id, trial.number, values, "fail", None, sweep.metric)
        return
    finally:
        os.environ.pop(pruning.ENV, None)
    value = _objective(summary, sweep.metric)
    run_id = _child_run(client, experiment, parent, trial.number)
    if value is None or not math.isfinite(value):
        trial.set_user_attr("tuneline.error", f"{sweep.metric} not reported or not finite ({value})")
        study.tell(trial.number, state=TrialState.FAIL)
        _record_child(client, run_id, trial.number, values, "fail", None, sweep.metric)
        return
    cached = list(summary.cached_steps)
    trial.set_user_attr("tuneline.pipeline_run", summary.pipeline_run)
    trial.set_user_attr("tuneline.cached_steps", cached)
    study.tell(trial.number, value)
    log.info(
        "sweep trial %d: %s %.4g (cached: %s)", trial.number, sweep.metric, value, ", ".join(cached) or "none"
    )
    _record_child(client, run_id, trial.number, values, "complete", value, sweep.metric)


def _objective(summary: RunSummary, metric: str) -> float | None:
    """The fine-tuned model's score from the eval report; with evaluation off, eval_loss from
    training (the model artifact's metadata)."""
    report = summary.eval_report or {}
    if report.get("enabled"):
        value = (report.get("finetuned") or {}).get(metric)
        return float(value) if isinstance(value, (int, float)) else None
    from zenml.client import Client

    run = Client().get_pipeline_run(summary.pipeline_run)
    step = run.steps.get("train_model")
    if step is None or "model" not in step.outputs:
        return None
    value = step.outputs["model"][0].run_metadata.get(metric)
    return float(value) if isinstance(value, (int, float)) else None


def _tracking(cfg: ProjectConfig) -> tuple[str, Any]:
    """(experiment name, client): the store and experiment the trials log to,
    created as a pipeline run would create them."""
    from mlflow import MlflowClient

    from pipelines.stack import bootstrap_lock, configure_environment, ensure_stack, quiet_known_noise
    from tuneline.tracking import ensure_experiment

    configure_environment()
    quiet_known_noise()
    tuneline_home().mkdir(parents=True, exist_ok=True)
    uri = mlflow_tracking_uri(cfg.tracking.mlflow_tracking_uri)
    ensure_stack(uri)
    experiment = cfg.tracking.experiment_name or pipeline_for(cfg).name
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    with bootstrap_lock():
        ensure_experiment(uri, experiment, str(tuneline_home() / "mlflow-artifacts"))
        if client.get_experiment_by_name(experiment) is None:
            client.create_experiment(experiment)
    return experiment, client


def _parent_run(client: Any, study: Any, sweep: Sweep, experiment: str, url: str) -> str:
    """The study's parent run: the one recorded in the study if it still exists, else a new one."""
    from mlflow.exceptions import MlflowException

    run_id = study.user_attrs.get(studies.PARENT_RUN_ATTR)
    if run_id:
        try:
            run = client.get_run(run_id)
            if run.info.lifecycle_stage != "deleted":
                client.update_run(run_id, status="RUNNING")
                return run_id
        except MlflowException:
            pass
    exp = client.get_experiment_by_name(experiment)
    run = client.create_run(
        exp.experiment_id,
        run_name=f"sweep-{study.study_name}",
        tags={"tuneline.run_type": "sweep", STUDY_TAG: study.study_name},
    )
    run_id = run.info.run_id
    study.set_user_attr(studies.PARENT_RUN_ATTR, run_id)
    _log_new_params(
        client,
        run_id,
        {
            "sweep.study": study.study_name,
            "sweep.storage": redact_uri(url),
            "sweep.metric": sweep.metric,
            "sweep.direction": sweep.direction,
            "sweep.sampler": "TPESampler",
            "sweep.seed": sweep.spec.seed,
            "sweep.pruner": json.dumps(sweep.spec.pruner.model_dump()),
            "sweep.space": json.dumps({p.key: _describe_param(p) for p in sweep.params})[:500],
            "sweep.config": sweep.config_path,
            "sweep.file": sweep.path,
            "sweep.overrides": json.dumps(sweep.base_overrides)[:500],
        },
    )
    return run_id


def _describe_param(p: Any) -> str:
    if p.kind == "choice":
        return f"choices {list(p.choices)}"
    return f"{p.kind} [{p.low}, {p.high}]{' log' if p.log else ''}"


def _log_new_params(client: Any, run_id: str, params: dict[str, Any]) -> None:
    """MLflow refuses to change a logged param; a resumed run logs only the ones not there yet."""
    from mlflow.entities import Param

    existing = client.get_run(run_id).data.params
    new = [Param(k, str(v)[:500]) for k, v in params.items() if k not in existing]
    if new:
        client.log_batch(run_id, params=new)


def _child_run(client: Any, experiment: str, parent: str, number: int) -> str | None:
    """The MLflow run a trial's pipeline opened (None if it failed before any step logged)."""
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent}' and tags.`{TRIAL_TAG}` = '{number}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def _record_child(
    client: Any,
    run_id: str | None,
    number: int,
    values: dict[str, Any],
    state: str,
    value: float | None,
    metric: str,
) -> None:
    if run_id is None:
        return
    _log_new_params(client, run_id, {"trial_number": number, **values})
    client.set_tag(run_id, STATE_TAG, state)
    if value is not None:
        client.log_metric(run_id, "objective", value)
        client.log_metric(run_id, f"objective_{metric}", value)


def _log_parent(client: Any, run_id: str, sweep: Sweep, summary: dict[str, Any], target: int) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    counts = summary["counts"]
    metrics = [Metric(f"trials_{k}", float(v), now, 0) for k, v in counts.items()] + [
        Metric("trial_objective", float(r["value"]), now, r["number"])
        for r in summary["trials"]
        if r["value"] is not None
    ]
    best = summary["best"]
    tags = {"tuneline.sweep.trials_target": str(target)}
    if best is not None:
        metrics.append(Metric(f"best_{sweep.metric}", float(best["value"]), now, 0))
        tags["best.trial"] = str(best["number"])
        tags.update({f"best.{k}": str(v) for k, v in best["params"].items()})
    client.log_batch(run_id, metrics=metrics)
    for k, v in tags.items():
        client.set_tag(run_id, k, v)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "summary.json"
        path.write_text(json.dumps(summary, indent=1, default=str))
        client.log_artifact(run_id, str(path), artifact_path="sweep")
        png = parallel_coordinates(summary, {p.key: p.log for p in sweep.params})
        if png is not None:
            plot = Path(tmp) / "parallel_coordinates.png"
            plot.write_bytes(png)
            client.log_artifact(run_id, str(plot), artifact_path="sweep")


def _record_final(client: Any, parent: str, final: RunSummary) -> None:
    reg = final.registration or {}
    client.set_tag(parent, "tuneline.sweep.final_run", final.pipeline_run)
    if reg.get("registered"):
        client.set_tag(parent, "tuneline.sweep.registered", reg.get("model_uri", ""))


def _discard_checkpoints(cfg: ProjectConfig, fingerprints: dict[str, str]) -> None:
    """A pruned trial's checkpoints are never resumed by the study; drop them so they do not
    pile up beside real unfinished runs."""
    import shutil

    from steps._training import checkpoint_dirs, discard_durable, run_identity

    try:
        local, durable = checkpoint_dirs(cfg, run_identity(cfg, fingerprints))
        shutil.rmtree(local, ignore_errors=True)
        discard_durable(durable)
    except (OSError, RuntimeError) as e:  # cleanup only: the study result stands
        log.debug("could not remove a pruned trial's checkpoints: %s", e)


@contextmanager
def _study_lock(url: str, name: str) -> Iterator[None]:
    """One sweep process per study on this machine: a second would close the first one's
    running trial as interrupted."""
    from filelock import FileLock, Timeout

    digest = hashlib.sha256(f"{url}\0{name}".encode()).hexdigest()[:16]
    lock_dir = tuneline_home() / "locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(lock_dir / f"sweep-{digest}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout as e:
        raise UserError(
            f"another sweep is running study '{name}' ({redact_uri(url)}); wait for it to finish, "
            "or pass --study NEW_NAME"
        ) from e
    try:
        yield
    finally:
        lock.release()


def format_sweep(result: SweepResult) -> str:
    """The study table, the final run's summary, then the best trial and the registration decision."""
    lines = format_study(result.summary)
    if result.recovered:
        lines.append(f"  interrupted trials {result.recovered} were run again")
    lines.append(
        f"  new trials this run: {len(result.new_trials)}  storage: {result.storage}  "
        f"wall time: {result.wall_s:.0f}s"
    )
    out = "\n".join(lines)
    best = result.summary.get("best")
    if result.final is not None:
        out += "\n" + format_summary(result.final)
    if best is None:
        return out + "\n\nno trial completed: nothing registered"
    values = space.describe(best["params"])
    reg = (result.final.registration if result.final else None) or {}
    if reg.get("registered"):
        decision = f"registered {reg['model_uri']} as @{reg['alias']} ({reg['reason']})"
    else:
        decision = f"not registered: {reg.get('reason', 'no registration step ran')}"
    return (
        out
        + f"\n\nbest trial {best['number']}: {result.summary['metric']} {best['value']:.6g}  {values}"
        + f"\n  registration: {decision}"
    )
