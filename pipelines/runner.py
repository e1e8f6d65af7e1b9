"""Launch a configured pipeline on the tuneline stack and summarise the outcome.

Kept out of run.py so the CLI stays a dispatcher and tests can launch runs in-process.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneline.config import PipelineConfig, ProjectConfig
from tuneline.evaluate.report import summary_lines
from tuneline.home import mlflow_tracking_uri, redact_uri, tuneline_home
from tuneline.retrain import retrain_note
from tuneline.tracking import ensure_experiment

log = logging.getLogger("tuneline")

# record kind (from train.method) -> (pipeline module, pipeline function)
PIPELINES = {
    "chat": ("pipelines.sft", "sft_pipeline"),
    "text": ("pipelines.sft", "sft_pipeline"),
    "preference": ("pipelines.preference", "preference_pipeline"),
}
EVALUATION_PIPELINE = ("pipelines.evaluate", "evaluate_pipeline")
# `train.backend: openai`: training through the OpenAI fine-tuning API (pipelines/openai.py).
OPENAI_PIPELINE = ("pipelines.openai", "openai_pipeline")
# `retrain.when: data_changed`: the same steps behind a decision (pipelines/retrain.py).
RETRAIN_PIPELINES = {
    "chat": ("pipelines.retrain", "retrain_sft_pipeline"),
    "text": ("pipelines.retrain", "retrain_sft_pipeline"),
    "preference": ("pipelines.retrain", "retrain_preference_pipeline"),
}


@dataclass
class RunSummary:
    pipeline_run: str
    status: str
    cached_steps: list[str] = field(default_factory=list)
    executed_steps: list[str] = field(default_factory=list)
    eval_report: dict[str, Any] = field(default_factory=dict)
    registration: dict[str, Any] = field(default_factory=dict)
    tracking_uri: str = ""
    notes: list[str] = field(default_factory=list)  # what was run on what (e.g. the model evaluated)


def pipeline_for(cfg: ProjectConfig, *, scheduled: bool = False) -> Any:
    if cfg.train.backend == "openai":
        return load_pipeline(OPENAI_PIPELINE)
    gated = cfg.retrain.resolved(scheduled=scheduled) == "data_changed"
    return load_pipeline((RETRAIN_PIPELINES if gated else PIPELINES)[cfg.kind])


def load_pipeline(where: tuple[str, str]) -> Any:
    """(module, function) -> the pipeline; imported only once ZenML's store is set up."""
    import importlib

    module, func = where
    return getattr(importlib.import_module(module), func)


def pipeline_steps(
    pipe: Any, config: PipelineConfig, fingerprints: dict[str, str], **params: Any
) -> dict[str, Any]:
    """The steps this pipeline runs for this config, by name, in order: read from the
    pipeline function itself, so the step list is written once (in `pipelines/`)."""
    pipe.prepare(config=config, fingerprints=fingerprints, **params)
    return {name: invocation.step for name, invocation in pipe.invocations.items()}


def _produces_model(step: Any) -> bool:
    from tuneline.artifacts import ModelArtifact

    return any(
        out.resolved_annotation is ModelArtifact for out in step.entrypoint_definition.outputs.values()
    )


def _step_options(
    cfg: ProjectConfig,
    tracker: str | None,
    steps: dict[str, Any],
    *,
    experiment_name: str | None = None,
    run_tags: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Per-step settings: the experiment tracker for every step that logs to MLflow (through
    `steps._tracking`), with the run's experiment and tags (set on the MLflow run by whichever
    step opens it, so a run whose first steps were cached still carries them), GPU resources
    and the step operator for the step that trains."""
    from zenml.config import ResourceSettings

    from steps._caching import step_uses

    res = cfg.train.resources
    options: dict[str, dict[str, Any]] = {}
    for name, step in steps.items():
        opts: dict[str, Any] = {}
        if tracker and step_uses(step, "steps._tracking"):
            opts["experiment_tracker"] = tracker
            tracker_settings = {
                k: v
                for k, v in {
                    "experiment_name": experiment_name or cfg.tracking.experiment_name,
                    "tags": run_tags,
                }.items()
                if v
            }
            opts["settings"] = {"experiment_tracker": tracker_settings} if tracker_settings else {}
        if _produces_model(step):
            resources = {
                k: v
                for k, v in {
                    "gpu_count": res.gpu_count,
                    "cpu_count": res.cpu_count,
                    "memory": res.memory,
                }.items()
                if v is not None
            }
            if resources:
                opts.setdefault("settings", {})["resources"] = ResourceSettings(**resources)
            if res.step_operator:
                opts["step_operator"] = res.step_operator
        if opts:
            options[name] = opts
    return options


def new_run_name(pipeline_name: str) -> str:
    """Chosen before the run starts, so a failure is looked up in this run's own record even
    while other runs of the same pipeline start or fail around it."""
    import uuid
    from datetime import datetime

    return f"{pipeline_name}-{datetime.now():%Y_%m_%d-%H_%M_%S}-{uuid.uuid4().hex[:8]}"


def run_pipeline(
    cfg: ProjectConfig,
    fingerprints: dict[str, str],
    *,
    enable_cache: bool = True,
    pipeline: tuple[str, str] | None = None,
    params: dict[str, Any] | None = None,
    run_tags: dict[str, str] | None = None,
) -> RunSummary:
    """Run the training pipeline for cfg's method, or `pipeline` (module, function) with `params`
    besides `config` and `fingerprints` (the evaluation pipeline). Either logs to the config's
    MLflow experiment; only training runs carry the ZenML Model that mirrors the registry."""
    from pipelines.stack import (
        bootstrap_lock,
        configure_environment,
        ensure_stack,
        experiment_tracker_name,
        quiet_known_noise,
    )
    from pipelines.zenml_model import zenml_model
    from tuneline.evaluate.standalone import RUN_TYPE_TAG

    configure_environment()
    quiet_known_noise()
    tuneline_home().mkdir(parents=True, exist_ok=True)
    uri = mlflow_tracking_uri(cfg.tracking.mlflow_tracking_uri)
    # Runs sharing a home create ZenML's store and stack, then the experiment, one at a time
    # (`bootstrap_lock`). The store must exist before a pipeline's steps are imported: that
    # opens it too (materializer sources).
    ensure_stack(uri)
    pipe = load_pipeline(pipeline) if pipeline else pipeline_for(cfg)
    experiment = cfg.tracking.experiment_name or load_pipeline(PIPELINES[cfg.kind]).name
    with bootstrap_lock():
        ensure_experiment(uri, experiment, str(tuneline_home() / "mlflow-artifacts"))
    cfg = pin_model_references(cfg, uri)
    inputs = {"config": PipelineConfig.of(cfg), "fingerprints": fingerprints, **(params or {})}
    run_name = new_run_name(pipe.name)
    steps = _step_options(
        cfg,
        experiment_tracker_name(),
        pipeline_steps(pipe, **inputs),
        experiment_name=experiment,
        run_tags=run_tags or {RUN_TYPE_TAG: "training"},
    )
    configured = pipe.with_options(
        enable_cache=enable_cache,
        run_name=run_name,
        steps=steps,
        model=zenml_model(cfg, run_name) if pipeline is None else None,
    )
    try:
        run = configured(**inputs)
    except RuntimeError as e:
        raise step_failure(run_name) from e
    return summarize_run(run, uri)


def run_evaluation(
    cfg: ProjectConfig, fingerprints: dict[str, str], target: Any, *, enable_cache: bool = True
) -> RunSummary:
    """Score `target` (a `tuneline.evaluate.standalone.EvaluationTarget`, resolved before the run)
    with the evaluation pipeline: an MLflow run in the config's experiment tagged as an
    evaluation of the pinned reference; nothing logged as a model, nothing registered."""
    from tuneline.config import EvalStage
    from tuneline.evaluate.standalone import evaluation_config

    # Pinned first: the evaluation config's fallback base may be a `models:/` reference.
    cfg = pin_model_references(cfg, mlflow_tracking_uri(cfg.tracking.mlflow_tracking_uri))
    summary = run_pipeline(
        cfg,
        fingerprints,
        enable_cache=enable_cache,
        pipeline=EVALUATION_PIPELINE,
        params={
            "eval_config": EvalStage.of(evaluation_config(cfg, target)),
            "model_reference": target.reference,
            "model_fingerprint": target.fingerprint,
        },
        run_tags=target.tags(),
    )
    pinned = "" if target.requested == target.reference else f" ({target.requested})"
    summary.notes = [
        f"evaluated {target.reference}{pinned}: nothing registered",
        f"base compared against: {target.base_note}",
    ]
    return summary


def step_failure(run_name: str) -> Exception:
    """ZenML raises a generic RuntimeError; rebuild the failing step's own error from the run record.

    A user error inside a step (non-finite loss, refused resume, bad data) keeps exit code 2.
    """
    from zenml.client import Client
    from zenml.enums import ExecutionStatus

    from tuneline.errors import TunelineError, UserError

    try:
        run = Client().get_pipeline_run(run_name, allow_name_prefix_match=False)
    except KeyError:
        return TunelineError(f"pipeline run {run_name} failed before it started")
    failed = [(n, s) for n, s in run.steps.items() if s.status == ExecutionStatus.FAILED]
    if not failed:
        return TunelineError(f"pipeline run {run.name} failed")
    name, step = failed[0]
    info = step.exception_info
    source = (info.source or "") if info else ""
    message = (info.message or "").strip() if info else ""
    err_cls: type[TunelineError] = TunelineError
    try:
        from zenml.utils import source_utils

        if source and issubclass(source_utils.load(source), UserError):
            err_cls = UserError
    except (ImportError, AttributeError, ValueError, TypeError) as e:
        log.debug("could not load exception class %s: %s", source, e)
    kind = source.rsplit(".", 1)[-1] or "error"
    return err_cls(
        f"step {name} failed in run {run.name}: {kind}: {message}\n"
        f"  (no model was registered; the MLflow run is marked FAILED)"
    )


def pin_model_references(cfg: ProjectConfig, uri: str) -> ProjectConfig:
    """Resolve `models:/name@alias` to the version it points at now, before the run starts."""
    ref = cfg.train.preference.reference_model
    if not ref or not ref.startswith("models:/"):
        return cfg
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from tuneline.errors import ConfigError, Problem
    from tuneline.tracking import pin_model_uri

    try:
        pinned = pin_model_uri(MlflowClient(tracking_uri=uri, registry_uri=uri), ref)
    except (MlflowException, ValueError) as e:
        raise ConfigError(
            [
                Problem(
                    "train.preference.reference_model",
                    f"cannot resolve '{ref}' in the MLflow registry at {redact_uri(uri)}: "
                    f"{str(e).splitlines()[0]} (register that model first, e.g. run configs/sft.yaml)",
                )
            ]
        ) from e
    log.info("reference model %s -> %s", ref, pinned)
    cfg = cfg.model_copy(deep=True)
    cfg.train.preference.reference_model = pinned
    return cfg


def summarize_run(run: Any, uri: str) -> RunSummary:
    from zenml.client import Client
    from zenml.enums import ExecutionStatus

    run = Client().get_pipeline_run(run.id)
    summary = RunSummary(pipeline_run=run.name, status=str(run.status.value), tracking_uri=redact_uri(uri))
    for name, step in run.steps.items():
        (summary.cached_steps if step.status == ExecutionStatus.CACHED else summary.executed_steps).append(
            name
        )
        if "eval_report" in step.outputs:
            summary.eval_report = step.outputs["eval_report"][0].load()
        if "registration" in step.outputs:
            summary.registration = step.outputs["registration"][0].load()
        if "retrain_decision" in step.outputs:
            summary.notes.append(retrain_note(step.outputs["retrain_decision"][0].load()))
    return summary


def format_summary(s: RunSummary) -> str:
    lines = [f"\nRun {s.pipeline_run}: {s.status}"]
    if s.cached_steps:
        lines.append(f"  cached steps (inputs unchanged): {', '.join(s.cached_steps)}")
    if s.executed_steps:
        lines.append(f"  executed steps: {', '.join(s.executed_steps)}")
    lines += [f"  {note}" for note in s.notes]
    # Metric table with deltas and intervals, the champion comparison, the largest wins and losses.
    lines += summary_lines(s.eval_report)
    reg = s.registration
    earlier = (
        " (by an earlier run; this one was served from the cache)"
        if "register_model" in s.cached_steps
        else ""
    )
    if reg.get("registered"):
        if reg["promoted"]:
            lines.append(
                f"\n  registered {reg['model_uri']}{earlier}: promoted to @{reg['alias']} ({reg['reason']})"
            )
        else:
            lines.append(f"\n  registered {reg['model_uri']}{earlier} as @{reg['alias']}: {reg['reason']}")
    elif reg:
        lines.append(f"\n  not registered: {reg.get('reason')}")
    lines += ["", f"  dashboards: {dashboard_command()}   (MLflow UI + ZenML dashboard; Ctrl-C stops both)"]
    if s.tracking_uri.startswith(("http://", "https://")):
        lines.append(f"    MLflow tracking server: {s.tracking_uri}")
    return "\n".join(lines)


def dashboard_command() -> str:
    """How to open this run's dashboards, as the user can paste it: the venv's python (activated
    or not), run.py, and TUNELINE_HOME when it is not the default."""
    import os

    from tuneline.home import PROJECT_ROOT

    def short(p: Path) -> str:
        try:
            rel = os.path.relpath(p)
        except ValueError:  # another drive
            return str(p)
        return rel if not rel.startswith("..") else str(p)

    home = tuneline_home()
    env = "" if home == PROJECT_ROOT / ".tuneline" else f"TUNELINE_HOME={home} "
    return f"{env}{short(Path(sys.executable))} {short(PROJECT_ROOT / 'run.py')} dashboard"
