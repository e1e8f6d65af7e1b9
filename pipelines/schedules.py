"""`run.py schedules`: the ZenML schedules of this store, and deleting one with what runs it.

A schedule is two things: ZenML's record and the orchestrator's job that fires it (a Kubernetes
CronJob, a Vertex AI schedule, a SageMaker/EventBridge schedule). Deleting only the record
leaves the job starting runs, so `--delete` goes through ZenML's `Client.delete_schedule`,
which asks the orchestrator to remove its job where the orchestrator can (ZenML 0.98:
Kubernetes deletes its CronJob), and refuses, changing nothing, where it cannot: the person
removes the job in the cloud, then `--zenml-only` drops the record.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tuneline.errors import UserError

log = logging.getLogger("tuneline")

# Where an orchestrator without schedule deletion keeps the job, and how a person removes it.
MANUAL_DELETE = {
    "vertex": "the Vertex AI schedule: `gcloud ai schedules list --region REGION`, then "
    "`gcloud ai schedules delete SCHEDULE_ID --region REGION` (or the console's Pipelines > Schedules)",
    "sagemaker": "the SageMaker pipeline schedule (an EventBridge Scheduler schedule): "
    "`aws scheduler list-schedules`, then `aws scheduler delete-schedule --name NAME`",
}


# The ZenML pipeline names a config's runs use, by record kind: its pipeline, and the one
# `retrain.when: data_changed` runs (pipelines/runner.py PIPELINES and RETRAIN_PIPELINES).
PIPELINE_NAMES = {
    "chat": ("tuneline_sft", "tuneline_sft_retrain"),
    "text": ("tuneline_sft", "tuneline_sft_retrain"),
    "preference": ("tuneline_preference", "tuneline_preference_retrain"),
}


# Orchestrators that run pipelines in this process: they never create a job for a schedule.
LOCAL_FLAVORS = ("local", "local_docker")


@dataclass
class ScheduleRow:
    name: str
    pipeline: str
    cron: str
    timezone: str
    active: bool
    next_run: str
    orchestrator: str

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def _when(schedule: Any) -> str:
    if schedule.cron_expression:
        return schedule.cron_expression
    if schedule.interval_second:
        return f"every {int(schedule.interval_second.total_seconds())} s from {schedule.start_time:%Y-%m-%d %H:%M}"
    if schedule.run_once_start_time:
        return f"once at {schedule.run_once_start_time:%Y-%m-%d %H:%M}"
    return "-"


def next_run(schedule: Any, now: datetime | None = None) -> str:
    """The next start in UTC, when ZenML's record says enough to know it; "-" otherwise."""
    if not schedule.active:
        return "-"
    now = now or datetime.now(UTC).replace(tzinfo=None)  # ZenML stores naive UTC
    end = schedule.end_time
    nxt: datetime | None = None
    if schedule.cron_expression:
        try:
            from croniter import croniter

            nxt = croniter(schedule.cron_expression, max(now, schedule.start_time or now)).get_next(datetime)
        except (ImportError, ValueError, KeyError):
            return "unknown"
    elif schedule.interval_second and schedule.start_time:
        step = schedule.interval_second
        nxt = schedule.start_time
        if nxt < now:
            nxt += step * (int((now - nxt) / step) + 1)
    elif schedule.run_once_start_time and schedule.run_once_start_time > now:
        nxt = schedule.run_once_start_time
    if nxt is None or (end is not None and nxt > end):
        return "-"
    return f"{nxt:%Y-%m-%d %H:%M} UTC"


def _schedules(client: Any) -> list[Any]:
    from zenml.utils.pagination_utils import depaginate

    return depaginate(client.list_schedules, hydrate=True, sort_by="asc:name")


def _names(client: Any) -> dict[str, str]:
    """id -> name of every pipeline and orchestrator, looked up once."""
    from zenml.enums import StackComponentType
    from zenml.utils.pagination_utils import depaginate

    out = {str(p.id): p.name for p in depaginate(client.list_pipelines)}
    for c in depaginate(client.list_stack_components, type=StackComponentType.ORCHESTRATOR):
        out[str(c.id)] = f"{c.name} ({c.flavor_name})"
    return out


def list_schedules(client: Any, pipelines: set[str] | None = None) -> list[ScheduleRow]:
    """Every schedule of the store (or those of `pipelines`), by name."""
    names = _names(client)
    rows = []
    for s in _schedules(client):
        pipeline = names.get(str(s.pipeline_id), "-") if s.pipeline_id else "-"
        if pipelines is not None and pipeline not in pipelines:
            continue
        rows.append(
            ScheduleRow(
                name=s.name,
                pipeline=pipeline,
                cron=_when(s),
                timezone=str(s.run_metadata.get("timezone") or "UTC"),
                active=bool(s.active),
                next_run=next_run(s),
                orchestrator=names.get(str(s.orchestrator_id), "-") if s.orchestrator_id else "-",
            )
        )
    return rows


def format_schedules(rows: list[ScheduleRow], where: str) -> str:
    if not rows:
        return f"no schedules in {where}"
    header = ScheduleRow("name", "pipeline", "cron", "timezone", "active", "next run", "orchestrator")
    table = [header, *rows]
    cols = list(header.as_dict())
    widths = {c: max(len(str(r.as_dict()[c])) for r in table) for c in cols}

    def line(r: ScheduleRow) -> str:
        d = r.as_dict()
        if r is not header:
            d["active"] = "yes" if r.active else "no"
        return "  ".join(str(d[c]).ljust(widths[c]) for c in cols).rstrip()

    return "\n".join([f"schedules in {where}:", *(line(r) for r in table)])


def delete_schedule(client: Any, name: str, *, zenml_only: bool = False) -> str:
    """Delete schedule `name` and its orchestrator job; returns what was done, for people."""
    from zenml.enums import StackComponentType
    from zenml.orchestrators import BaseOrchestrator

    schedules = {s.name: s for s in _schedules(client)}
    if name not in schedules:
        existing = ", ".join(sorted(schedules)) or "(none)"
        raise UserError(f"schedules --delete {name}: no such schedule; existing: {existing}")
    schedule = schedules[name]
    if zenml_only:
        client.zen_store.delete_schedule(schedule.id, soft=True)
        return f"deleted ZenML's record of schedule '{name}' (its orchestrator job was left as it is)"
    job = "its orchestrator job"
    if schedule.orchestrator_id:
        try:
            model = client.get_stack_component(StackComponentType.ORCHESTRATOR, schedule.orchestrator_id)
        except KeyError:
            model = None
        if model is not None:
            flavor = model.flavor_name
            if flavor in LOCAL_FLAVORS:
                client.zen_store.delete_schedule(schedule.id, soft=True)
                return f"deleted schedule '{name}' (the {flavor} orchestrator runs no scheduled job)"
            try:
                orchestrator = BaseOrchestrator.from_model(model)
                deletes = orchestrator.supports_schedule_deletion
                if deletes:
                    # The job first: should that fail, ZenML's record still lists the schedule.
                    orchestrator.delete_schedule(schedule)
            except Exception as e:  # a missing integration, kube config or API error: many types
                raise UserError(
                    f"schedules --delete {name}: could not remove its job through orchestrator "
                    f"'{model.name}' ({flavor}): {type(e).__name__}: {_first_line(e)}; nothing was deleted. "
                    f"Fix the access (integration installed: `zenml integration install {flavor}`; "
                    f"credentials for the cluster) and retry, or remove the job yourself"
                    f"{_kube_hint(schedule, model)} and run `schedules --delete {name} --zenml-only`"
                ) from e
            if not deletes:
                where = MANUAL_DELETE.get(flavor, f"the job the {flavor} orchestrator created")
                raise UserError(
                    f"schedules --delete {name}: the {flavor} orchestrator '{model.name}' cannot delete its "
                    f"own schedule, and deleting ZenML's record alone would leave it starting runs. "
                    f"Remove {where}, then run `schedules --delete {name} --zenml-only`"
                )
            if flavor == "kubernetes":
                cron_job = schedule.run_metadata.get("cron_job_name")
                job = f"its CronJob '{cron_job}'" if cron_job else "its CronJob (none recorded)"
        else:
            job = "no orchestrator job (its orchestrator is gone)"
    else:
        job = "no orchestrator job (none recorded)"
    # Archived, as `zenml pipeline schedule delete` does: runs it started keep their link.
    client.zen_store.delete_schedule(schedule.id, soft=True)
    return f"deleted schedule '{name}' and {job}"


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else "(no message)"


def _kube_hint(schedule: Any, model: Any) -> str:
    if model.flavor_name != "kubernetes":
        return ""
    cron_job = schedule.run_metadata.get("cron_job_name") or "CRONJOB"
    namespace = (model.configuration or {}).get("kubernetes_namespace") or "zenml"
    return f" (`kubectl delete cronjob {cron_job} -n {namespace}`)"


def schedules_command(*, delete: str | None, zenml_only: bool, config_path: str | None) -> str:
    """The `schedules` subcommand: list, or delete one (exit 2 for an unknown name)."""
    from pipelines.stack import configure_environment, quiet_known_noise

    pipelines = None
    if config_path:
        from tuneline.config import load_config

        pipelines = set(PIPELINE_NAMES[load_config(config_path).kind])
    configure_environment()
    quiet_known_noise()
    from zenml.client import Client

    client = Client()
    if delete:
        return delete_schedule(client, delete, zenml_only=zenml_only)
    rows = list_schedules(client, pipelines)
    return format_schedules(rows, _store_description(client))


def _store_description(client: Any) -> str:
    from tuneline.home import redact_uri

    store = client.zen_store
    return f"the ZenML store at {redact_uri(store.url)}"
