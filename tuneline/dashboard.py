"""`python run.py dashboard`: the MLflow UI on the project's tracking store and the local ZenML
dashboard, both on 127.0.0.1, started together and stopped together.

Each runs as a child process in its own process group (MLflow's UI forks uvicorn workers), so
Ctrl-C or SIGTERM here stops every process either started and none is left behind. Their output
goes to log files under TUNELINE_HOME/logs; this process prints only the URLs.

ZenML runs as `zenml login --local --blocking`: a foreground server on the same SQLite store
the pipelines write to, which leaves the client's configuration alone (pipelines keep using the
store directly, while the dashboard is up and after). Preparing that store so the first visit
lands on the runs (ZenML's onboarding survey pre-answered) needs ZenML itself, so the caller
passes it in as `prepare_zenml`: this module stays zenml-free.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from tuneline.errors import TunelineError, UserError
from tuneline.home import mlflow_tracking_uri, redact_uri, tuneline_home, zenml_config_dir

HOST = "127.0.0.1"
ZENML_RUNS_PATH = "/projects/default/runs"
# MLflow 3's UI opens in its GenAI mode (traces, sessions) unless the URL asks for the other one.
MLFLOW_TRAINING_VIEW = "?workflowType=machine_learning"


@dataclass
class Service:
    """One dashboard server: how to start it, where it answers, what to show the user."""

    name: str
    cmd: list[str]
    port: int
    url: str  # where the user should go (the landing page)
    health: str = "/health"
    env: dict[str, str] = field(default_factory=dict)
    log: Path | None = None
    proc: subprocess.Popen | None = None

    @property
    def health_url(self) -> str:
        return f"http://{HOST}:{self.port}{self.health}"


def _bin(name: str) -> Path | None:
    """The venv's own console script (mlflow, zenml), whether or not the venv is activated."""
    path = Path(sys.executable).parent / name
    return path if path.exists() else None


def port_free(port: int) -> bool:
    """Nothing listens on `port`. SO_REUSEADDR, as the servers themselves bind: connections in
    TIME_WAIT after a server stopped do not make the port busy."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def answers(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return 200 <= r.status < 500
    except (urllib.error.URLError, OSError, ValueError):
        return False


def experiment_url(tracking_uri: str, base: str) -> str:
    """The page of the experiment with the newest run (the one a user just made), else the list.

    Also marks the project's own experiments (artifacts under TUNELINE_HOME) as model-training
    experiments, if an older version created them without that tag: MLflow 3's UI would guess,
    and may open them in its GenAI layout of traces instead of runs and charts.
    """
    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri[len("sqlite:///") :]).exists():
        return f"{base}/#/experiments{MLFLOW_TRAINING_VIEW}"
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from tuneline.tracking import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG

    try:
        client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        experiments = client.search_experiments()
        ours = (tuneline_home() / "mlflow-artifacts").resolve().as_uri()
        for e in experiments:
            if EXPERIMENT_KIND_TAG not in e.tags and (e.artifact_location or "").startswith(ours):
                client.set_experiment_tag(e.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        ids = [e.experiment_id for e in experiments]
        newest = (
            client.search_runs(ids, order_by=["attributes.start_time DESC"], max_results=1) if ids else []
        )
    except MlflowException:
        return f"{base}/#/experiments{MLFLOW_TRAINING_VIEW}"
    if not newest:
        return f"{base}/#/experiments{MLFLOW_TRAINING_VIEW}"
    return f"{base}/#/experiments/{newest[0].info.experiment_id}{MLFLOW_TRAINING_VIEW}"


def mlflow_service(tracking_uri: str, port: int) -> Service:
    home = tuneline_home()
    exe = _bin("mlflow")
    cmd = [str(exe)] if exe else [sys.executable, "-m", "mlflow"]
    cmd += [
        "ui",
        "--backend-store-uri",
        tracking_uri,
        "--host",
        HOST,
        "--port",
        str(port),
        "--workers",
        "1",  # one person browsing; four workers would cost a second of CPU each to start
        # Experiments made in the UI keep their artifacts with the project's, not in ./mlartifacts.
        "--artifacts-destination",
        str(home / "mlflow-artifacts"),
    ]
    base = f"http://{HOST}:{port}"
    return Service(
        "MLflow",
        cmd,
        port,
        url=experiment_url(tracking_uri, base),
        # No background job runner (GenAI judges and trace rollups): nothing here uses it.
        env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )


def zenml_service(port: int) -> Service:
    exe = _bin("zenml")
    cmd = (
        [str(exe)]
        if exe
        else [sys.executable, "-c", "import sys; from zenml_cli import cli; sys.exit(cli())"]
    )
    cmd += ["login", "--local", "--blocking", "--port", str(port), "--ip-address", HOST]
    return Service(
        "ZenML",
        cmd,
        port,
        url=f"http://{HOST}:{port}{ZENML_RUNS_PATH}",
        env={
            "ZENML_CONFIG_PATH": os.environ.get("ZENML_CONFIG_PATH", str(zenml_config_dir())),
            "ZENML_ANALYTICS_OPT_IN": os.environ.get("ZENML_ANALYTICS_OPT_IN", "false"),
            "AUTO_OPEN_DASHBOARD": "false",
        },
    )


def start(service: Service, log_dir: Path) -> None:
    log_dir.mkdir(parents=True, exist_ok=True)
    service.log = log_dir / f"dashboard-{service.name.lower()}.log"
    with open(service.log, "ab") as log:
        service.proc = subprocess.Popen(
            service.cmd,
            env={**os.environ, **service.env},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopped as a whole, not by the terminal
        )


def _log_tail(service: Service, lines: int = 15) -> str:
    if service.log is None or not service.log.exists():
        return ""
    text = service.log.read_text(errors="replace").splitlines()[-lines:]
    return "\n".join("    " + line for line in text)


def wait_ready(services: list[Service], timeout: float, poll: float = 0.5) -> None:
    """Until each answers HTTP; a server that exits or stays silent is an error naming its log."""
    deadline = time.monotonic() + timeout
    pending = list(services)
    while pending:
        for s in list(pending):
            code = s.proc.poll() if s.proc else None
            if code is not None:
                raise TunelineError(
                    f"the {s.name} dashboard exited with code {code} before it answered on port "
                    f"{s.port}; its log ({s.log}) ends with:\n{_log_tail(s)}"
                )
            if answers(s.health_url):
                pending.remove(s)
        if pending and time.monotonic() > deadline:
            names = ", ".join(f"{s.name} (log: {s.log})" for s in pending)
            raise TunelineError(f"no answer within {timeout:.0f}s from {names}")
        if pending:
            time.sleep(poll)


def _group_alive(pgid: int) -> bool:
    """Whether any process of the group still runs (zombies waiting for a parent do not count)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    proc = Path("/proc")
    if not proc.is_dir():
        return True
    for p in proc.iterdir():
        if not p.name.isdigit():
            continue
        try:
            fields = (p / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def stop(services: list[Service], grace: float = 15.0) -> None:
    """SIGINT to each server's process group (both shut down cleanly on it), then SIGTERM, then
    SIGKILL for whatever is left."""
    running = [s for s in services if s.proc is not None]
    for sig, wait in ((signal.SIGINT, grace), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        for s in running:
            s.proc.poll()  # reap the leader if it exited, so it does not count as alive
            if _group_alive(s.proc.pid):
                try:
                    os.killpg(s.proc.pid, sig)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            for s in running:
                s.proc.poll()
            if not any(_group_alive(s.proc.pid) for s in running):
                for s in running:
                    # The group can be gone while its leader is still an unreaped zombie (it died
                    # between the poll above and the check): collect its exit status now.
                    s.proc.wait(timeout=5.0)
                return
            time.sleep(0.2)


class _Stop(Exception):
    """SIGINT (Ctrl-C) or SIGTERM: leave the wait loop and stop the servers."""


def run_dashboards(
    *,
    mlflow_port: int = 5000,
    zenml_port: int = 8237,
    with_zenml: bool = True,
    tracking_uri: str | None = None,
    prepare_zenml: Callable[[], None] | None = None,
    ready_timeout: float = 240.0,
    out: TextIO | None = None,
) -> None:
    """Start the dashboards, print where they are, and keep them up until Ctrl-C or SIGTERM."""
    out = out or sys.stdout
    uri = mlflow_tracking_uri(tracking_uri)
    remote_mlflow = uri.startswith(("http://", "https://", "databricks"))
    wanted = ([] if remote_mlflow else [("--mlflow-port", mlflow_port)]) + (
        [("--zenml-port", zenml_port)] if with_zenml else []
    )
    for option, port in wanted:
        if not port_free(port):
            raise UserError(f"{option} {port}: port {port} on {HOST} is in use; pass another {option}")
    if not wanted:
        print(f"MLflow: {redact_uri(uri)} (a tracking server: nothing to start here)", file=out)
        return
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///") :]).exists():
        print(
            f"note: no run has logged to {uri} yet (TUNELINE_HOME={tuneline_home()}); the dashboards "
            "start empty. Run e.g. `python run.py --config configs/sft.yaml` to fill them.",
            file=out,
        )

    def on_signal(signum: int, frame: Any) -> None:
        raise _Stop

    # Both set explicitly: a shell starts background jobs with SIGINT ignored, and Python keeps that.
    previous: dict[int, Any] = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[sig] = signal.signal(sig, on_signal)
        except ValueError:  # not the main thread (an embedding caller): it stops us some other way
            pass
    log_dir = tuneline_home() / "logs"
    services: list[Service] = []
    try:
        names = [n for n, on in (("MLflow", not remote_mlflow), ("ZenML", with_zenml)) if on]
        print(
            f"starting the {' and '.join(names)} dashboard on {HOST} "
            f"(logs in {log_dir}; ZenML's server takes ~20 s) ...",
            file=out,
            flush=True,
        )
        if not remote_mlflow:
            services.append(mlflow_service(uri, mlflow_port))
            start(services[-1], log_dir)  # starts while ZenML's store is prepared
        if with_zenml:
            if prepare_zenml is not None:
                prepare_zenml()
            services.append(zenml_service(zenml_port))
            start(services[-1], log_dir)
        wait_ready(services, ready_timeout)
        print("\ndashboards (Ctrl-C stops them):", file=out)
        for s in services:
            print(f"  {s.name + ':':<8}{s.url}", file=out)
        if remote_mlflow:
            print(f"  MLflow: {redact_uri(uri)} (a tracking server: nothing started)", file=out)
        print(
            "\n  MLflow: a run's curves (Model metrics), params and stats, plots/ and eval/report.html "
            "(Artifacts);\n          the registered model with its aliases and lineage tags (Models).",
            file=out,
        )
        if with_zenml:
            print(
                "  ZenML:  each run's DAG; click an artifact for its visualization (eval report, examples).",
                file=out,
            )
        out.flush()
        while all(s.proc is not None and s.proc.poll() is None for s in services):
            time.sleep(0.5)
        raise TunelineError(
            "; ".join(
                f"the {s.name} dashboard stopped (exit code {s.proc.returncode}); its log ({s.log}) "
                f"ends with:\n{_log_tail(s)}"
                for s in services
                if s.proc is not None and s.proc.poll() is not None
            )
        )
    except (KeyboardInterrupt, _Stop):
        print("\nstopping the dashboards ...", file=out, flush=True)
    finally:
        for sig in previous:  # a second Ctrl-C must not cut the shutdown short and leave servers behind
            signal.signal(sig, signal.SIG_IGN)
        stop(services)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
