"""Launch a configured pipeline on the tuneline stack and summarise the outcome.

Kept out of run.py so the CLI stays a dispatcher and tests can launch runs in-process.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneline.config import ProjectConfig
from tuneline.home import mlflow_tracking_uri, redact_uri, tuneline_home
from tuneline.tracking import ensure_experiment

log = logging.getLogger("tuneline")

# record kind (from train.method) -> (pipeline module, pipeline function)
PIPELINES = {
    "chat": ("pipelines.sft", "sft_pipeline"),
    "text": ("pipelines.sft", "sft_pipeline"),
    "preference": ("pipelines.preference", "preference_pipeline"),
}
STEPS = {
    "sft_pipeline": [
        "load_dataset",
        "format_records",
        "tokenize_dataset",
        "train_model",
        "evaluate_model",
        "register_model",
    ],
    "preference_pipeline": [
        "load_dataset",
        "format_records",
        "train_preferences",
        "evaluate_preferences",
        "register_model",
    ],
}
TRACKED_STEPS = (
    "load_dataset",
    "tokenize_dataset",
    "train_model",
    "train_preferences",
    "evaluate_model",
    "evaluate_preferences",
    "register_model",
)


@dataclass
class RunSummary:
    pipeline_run: str
    status: str
    cached_steps: list[str] = field(default_factory=list)
    executed_steps: list[str] = field(default_factory=list)
    eval_report: dict[str, Any] = field(default_factory=dict)
    registration: dict[str, Any] = field(default_factory=dict)
    tracking_uri: str = ""


def _step_options(cfg: ProjectConfig, tracker: str | None, step_names: list[str]) -> dict[str, Any]:
    from zenml.config import ResourceSettings

    res = cfg.train.resources
    options: dict[str, dict[str, Any]] = {}
    for name in step_names:
        opts: dict[str, Any] = {}
        if tracker and name in TRACKED_STEPS:
            opts["experiment_tracker"] = tracker
            opts["settings"] = (
                {"experiment_tracker": {"experiment_name": cfg.tracking.experiment_name}}
                if cfg.tracking.experiment_name
                else {}
            )
        if name.startswith("train_"):
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


def run_pipeline(
    cfg: ProjectConfig, fingerprints: dict[str, str], *, enable_cache: bool = True
) -> RunSummary:
    import importlib

    from pipelines.stack import (
        configure_environment,
        ensure_stack,
        experiment_tracker_name,
        quiet_known_noise,
    )

    configure_environment()
    quiet_known_noise()
    tuneline_home().mkdir(parents=True, exist_ok=True)
    uri = mlflow_tracking_uri(cfg.tracking.mlflow_tracking_uri)
    ensure_stack(uri)
    cfg = pin_model_references(cfg, uri)
    kind = cfg.kind
    module, func = PIPELINES[kind]
    pipe = getattr(importlib.import_module(module), func)
    step_names = STEPS[func]
    ensure_experiment(
        uri, cfg.tracking.experiment_name or pipe.name, str(tuneline_home() / "mlflow-artifacts")
    )
    configured = pipe.with_options(
        enable_cache=enable_cache,
        steps=_step_options(cfg, experiment_tracker_name(), step_names),
    )
    # `tracking` stays out of the run's parameters: a URI may carry credentials, and no
    # step needs it (the stack's experiment tracker holds the URI, secrets as ZenML secrets).
    config = cfg.model_dump(mode="json", exclude={"tracking"})
    try:
        run = configured(config=config, fingerprints=fingerprints, kind=kind)
    except RuntimeError as e:
        raise step_failure(configured.name) from e
    return summarize_run(run, uri)


def step_failure(pipeline_name: str) -> Exception:
    """ZenML raises a generic RuntimeError; rebuild the failing step's own error from the run record.

    A user error inside a step (non-finite loss, refused resume, bad data) keeps exit code 2.
    """
    from zenml.client import Client
    from zenml.enums import ExecutionStatus

    from tuneline.errors import TunelineError, UserError

    runs = Client().list_pipeline_runs(pipeline_name=pipeline_name, sort_by="desc:created", size=1)
    if not runs.items:
        return TunelineError(f"pipeline {pipeline_name} failed before it started")
    run = Client().get_pipeline_run(runs.items[0].id)
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
    return summary


def format_summary(s: RunSummary) -> str:
    lines = [f"\nRun {s.pipeline_run}: {s.status}"]
    if s.cached_steps:
        lines.append(f"  cached steps (inputs unchanged): {', '.join(s.cached_steps)}")
    if s.executed_steps:
        lines.append(f"  executed steps: {', '.join(s.executed_steps)}")
    base, tuned = s.eval_report.get("base") or {}, s.eval_report.get("finetuned") or {}
    if tuned:
        width = max(len(k) for k in tuned) + 2
        lines.append(f"\n  {'held-out metric':<{width}}{'base':>10}{'fine-tuned':>12}")
        for k in sorted(tuned):
            b = f"{base[k]:.4f}" if k in base else "-"
            lines.append(f"  {k:<{width}}{b:>10}{tuned[k]:>12.4f}")
    reg = s.registration
    earlier = (
        " (by an earlier run; this one was served from the cache)"
        if "register_model" in s.cached_steps
        else ""
    )
    if reg.get("registered"):
        promo = f"promoted to @{reg['alias']}" if reg["promoted"] else "not promoted"
        lines.append(f"\n  registered {reg['model_uri']}{earlier}: {promo} ({reg['reason']})")
    elif reg:
        lines.append(f"\n  not registered: {reg.get('reason')}")
    home = tuneline_home()
    bin_dir = Path(sys.executable).parent  # the venv's own mlflow / zenml, whether or not it is activated
    mlflow_line = (
        f"{bin_dir / 'mlflow'} ui --backend-store-uri {s.tracking_uri}"
        if s.tracking_uri.startswith("sqlite")
        else s.tracking_uri
    )
    lines += [
        "",
        "  dashboards:",
        f"    MLflow: {mlflow_line}",
        f"    ZenML:  ZENML_CONFIG_PATH={home / 'zenml'} {bin_dir / 'zenml'} login --local"
        "   (logout --local stops it)",
    ]
    return "\n".join(lines)
