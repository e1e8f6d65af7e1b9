"""Start, follow, cancel and resume a fine-tuning job.

A job is identified by the fingerprint of what it trains on (the uploaded files' bytes, the base
model and the job settings). Its id is saved under TUNELINE_HOME as soon as the API returns it
and stored on the job itself as metadata, so a rerun after a crash attaches to the running or
succeeded job instead of paying for a second one; a failed or cancelled job is replaced. Ctrl-C
or any error while following the job cancels it: nothing keeps billing behind a dead run.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneline.errors import TunelineError

log = logging.getLogger("tuneline")

RUNNING = ("validating_files", "queued", "running")
TERMINAL = ("succeeded", "failed", "cancelled")
FINGERPRINT_KEY = "tuneline_fingerprint"
STATE_FILE = "openai_jobs.json"
# Metric names as logged (events' data and the result file use these, or the left names).
RESULT_COLUMNS = {
    "train_accuracy": "train_mean_token_accuracy",
    "valid_accuracy": "valid_mean_token_accuracy",
}
METRIC_KEYS = (
    "train_loss",
    "train_mean_token_accuracy",
    "valid_loss",
    "valid_mean_token_accuracy",
    "full_valid_loss",
    "full_valid_mean_token_accuracy",
)


class JobFailed(TunelineError):
    """The API ended the job without a model (failed or cancelled elsewhere)."""


@dataclass
class JobSpec:
    """What the job is created with; everything in it is part of the fingerprint."""

    model: str
    n_epochs: int | str = "auto"
    batch_size: int | str = "auto"
    learning_rate_multiplier: float | str = "auto"
    suffix: str | None = None
    seed: int | None = None

    def method(self) -> dict[str, Any]:
        return {
            "type": "supervised",
            "supervised": {
                "hyperparameters": {
                    "n_epochs": self.n_epochs,
                    "batch_size": self.batch_size,
                    "learning_rate_multiplier": self.learning_rate_multiplier,
                }
            },
        }


@dataclass
class JobResult:
    job_id: str
    fine_tuned_model: str
    base_model: str
    status: str
    trained_tokens: int | None
    fingerprint: str
    resumed: bool
    training_file: str
    validation_file: str | None
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    metrics: dict[int, dict[str, float]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["metrics"] = {str(k): v for k, v in self.metrics.items()}
        return d


def job_fingerprint(train_jsonl: str, validation_jsonl: str | None, spec: JobSpec) -> str:
    h = hashlib.sha256()
    for part in (train_jsonl, validation_jsonl or "", json.dumps(spec.__dict__, sort_keys=True)):
        h.update(hashlib.sha256(part.encode("utf-8")).digest())
    return h.hexdigest()[:32]


class JobState:
    """fingerprint -> job id, in TUNELINE_HOME; written atomically, one small JSON file."""

    def __init__(self, directory: str | Path):
        self.path = Path(directory) / STATE_FILE

    def _read(self) -> dict[str, Any]:
        try:
            return json.loads(self.path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def get(self, fp: str) -> str | None:
        entry = self._read().get(fp)
        return entry.get("job_id") if isinstance(entry, dict) else None

    def put(self, fp: str, job_id: str, **info: Any) -> None:
        data = self._read()
        data[fp] = {"job_id": job_id, "saved_at": int(time.time()), **info}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        tmp.replace(self.path)

    def forget(self, fp: str) -> None:
        data = self._read()
        if data.pop(fp, None) is not None:
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
            tmp.replace(self.path)


def find_job(client: Any, state: JobState, fp: str) -> Any | None:
    """A running or succeeded job for this fingerprint: the saved id first, else the API's job
    list filtered by our metadata (a crash before the id was saved)."""
    from openai import NotFoundError

    job_id = state.get(fp)
    if job_id:
        try:
            job = client.fine_tuning.jobs.retrieve(job_id)
            if job.status in RUNNING or job.status == "succeeded":
                return job
            log.info("openai job %s for these inputs ended %s; starting a new one", job_id, job.status)
        except NotFoundError:
            log.info("saved openai job %s is unknown to this endpoint; starting a new one", job_id)
        state.forget(fp)
    for job in client.fine_tuning.jobs.list(metadata={FINGERPRINT_KEY: fp}, limit=20):
        if (job.metadata or {}).get(FINGERPRINT_KEY) == fp and (
            job.status in RUNNING or job.status == "succeeded"
        ):
            return job
    return None


def start_job(client: Any, files: dict[str, str | None], spec: JobSpec, fp: str, state: JobState) -> Any:
    """Upload the files and create the job; its id is saved before anything else can fail."""
    train = client.files.create(file=("train.jsonl", files["train"].encode("utf-8")), purpose="fine-tune")
    valid = None
    if files.get("validation"):
        valid = client.files.create(
            file=("validation.jsonl", files["validation"].encode("utf-8")),
            purpose="fine-tune",  # type: ignore[union-attr]
        )
    kwargs: dict[str, Any] = {
        "model": spec.model,
        "training_file": train.id,
        "method": spec.method(),
        "metadata": {FINGERPRINT_KEY: fp},
    }
    if valid is not None:
        kwargs["validation_file"] = valid.id
    if spec.suffix:
        kwargs["suffix"] = spec.suffix
    if spec.seed is not None:
        kwargs["seed"] = spec.seed
    job = client.fine_tuning.jobs.create(**kwargs)
    state.put(fp, job.id, model=spec.model)
    log.info("openai fine-tuning job %s created (%s)", job.id, spec.model)
    return job


def _number(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if v == v else None  # NaN: not reported at this step


def metrics_of(data: dict[str, Any]) -> tuple[int | None, dict[str, float]]:
    """(step, metrics) from a metrics event's data or a result-file row."""
    step = data.get("step")
    out = {}
    for k, v in data.items():
        name = RESULT_COLUMNS.get(k, k)
        if name in METRIC_KEYS and (n := _number(v)) is not None:
            out[name] = n
    try:
        return (int(float(step)) if step is not None else None), out
    except (TypeError, ValueError):
        return None, out


def result_file_metrics(client: Any, job: Any) -> dict[int, dict[str, float]]:
    """Per-step metrics from the job's result CSV (step, train_loss, train_accuracy, valid_loss, ...)."""
    out: dict[int, dict[str, float]] = {}
    for file_id in job.result_files or []:
        text = client.files.content(file_id).text
        for row in csv.DictReader(io.StringIO(text)):
            step, metrics = metrics_of(row)
            if step is not None and metrics:
                out.setdefault(step, {}).update(metrics)
    return out


class Follower:
    """Reads the job's new events on each poll (the API lists them newest first) and hands
    metrics to `on_metrics(step, metrics)` once per step."""

    def __init__(self, client: Any, job_id: str, on_metrics: Callable[[int, dict[str, float]], None]):
        self.client, self.job_id, self.on_metrics = client, job_id, on_metrics
        self.seen: set[str] = set()
        self.metrics: dict[int, dict[str, float]] = {}

    def poll_events(self) -> None:
        new = []
        for event in self.client.fine_tuning.jobs.list_events(self.job_id, limit=100):
            if event.id in self.seen:
                break
            new.append(event)
        for event in reversed(new):
            self.seen.add(event.id)
            if event.type == "metrics" and isinstance(event.data, dict):
                self.record(*metrics_of(event.data))
            else:
                log.info("openai job %s: %s", self.job_id, event.message)

    def record(self, step: int | None, metrics: dict[str, float]) -> None:
        if step is None or not metrics:
            return
        fresh = {k: v for k, v in metrics.items() if k not in self.metrics.get(step, {})}
        if fresh:
            self.metrics.setdefault(step, {}).update(fresh)
            self.on_metrics(step, fresh)


def run_job(
    client: Any,
    files: dict[str, str | None],
    spec: JobSpec,
    *,
    state_dir: str | Path,
    on_metrics: Callable[[int, dict[str, float]], None] = lambda step, m: None,
    on_job: Callable[[Any, bool], None] = lambda job, resumed: None,
    poll_interval_s: float = 15.0,
    timeout_s: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> JobResult:
    """Train `spec.model` on `files` (`train`, optional `validation` JSONL text) and return the
    fine-tuned model, attaching to an earlier job for the same inputs when there is one.

    `on_job(job, resumed)` is called once the job is known (to record its id); `on_metrics`
    for each step's metrics as they arrive and, at the end, for steps only the result file has.
    """
    fp = job_fingerprint(files["train"] or "", files.get("validation"), spec)
    state = JobState(state_dir)
    job = find_job(client, state, fp)
    resumed = job is not None
    if resumed:
        log.info("attaching to openai job %s (%s) for these inputs: not starting another", job.id, job.status)
        state.put(fp, job.id, model=spec.model)
    else:
        job = start_job(client, files, spec, fp, state)
    on_job(job, resumed)
    follower = Follower(client, job.id, on_metrics)
    started = time.monotonic()
    try:
        while True:
            follower.poll_events()
            job = client.fine_tuning.jobs.retrieve(job.id)
            if job.status in TERMINAL:
                follower.poll_events()
                break
            if timeout_s is not None and time.monotonic() - started > timeout_s:
                raise TunelineError(
                    f"openai job {job.id} still {job.status} after train.openai.timeout_s={timeout_s:g}s"
                )
            sleep(poll_interval_s)
    except BaseException as e:
        _cancel(client, job.id, fp, state, reason=type(e).__name__)
        raise
    if job.status != "succeeded" or not job.fine_tuned_model:
        state.forget(fp)
        err = getattr(job, "error", None)
        detail = f": {err.code}: {err.message}" if err is not None and getattr(err, "message", None) else ""
        raise JobFailed(f"openai fine-tuning job {job.id} {job.status}{detail}")
    for step, metrics in sorted(result_file_metrics(client, job).items()):
        follower.record(step, metrics)
    hp = job.hyperparameters.model_dump() if getattr(job, "hyperparameters", None) is not None else {}
    return JobResult(
        job_id=job.id,
        fine_tuned_model=job.fine_tuned_model,
        base_model=job.model,
        status=job.status,
        trained_tokens=job.trained_tokens,
        fingerprint=fp,
        resumed=resumed,
        training_file=job.training_file,
        validation_file=job.validation_file,
        hyperparameters={k: v for k, v in hp.items() if v is not None},
        metrics=dict(sorted(follower.metrics.items())),
    )


def _cancel(client: Any, job_id: str, fp: str, state: JobState, *, reason: str) -> None:
    """Best effort: the original exception is what the caller must see."""
    try:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in RUNNING:
            client.fine_tuning.jobs.cancel(job_id)
            log.warning("openai job %s cancelled (%s)", job_id, reason)
            state.forget(fp)
    except Exception as e:  # the endpoint may be what failed
        log.warning("could not cancel openai job %s (%s): %s; cancel it in the dashboard", job_id, reason, e)
