"""Real database servers for the slow tier: a fresh PostgreSQL or MariaDB database per test, and a
`mlflow server` on it.

One launcher for every test that needs a server, so they all start, wait for and stop it the same
way. Each test gets its own database (CI shares the machine) and drops it afterwards; a database
server that is not reachable skips the test.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

HEALTH_TIMEOUT_S = 120
START_ATTEMPTS = 3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _db_name() -> str:
    return f"tuneline_test_{uuid.uuid4().hex[:10]}"


@contextmanager
def postgres_db() -> Iterator[str]:
    """A new database on 127.0.0.1:5432 (user postgres, trust auth): its SQLAlchemy URI."""
    psycopg2 = pytest.importorskip("psycopg2")
    name = _db_name()
    try:
        conn = psycopg2.connect(
            host="127.0.0.1", port=5432, user="postgres", dbname="postgres", connect_timeout=3
        )
    except psycopg2.OperationalError as e:
        pytest.skip(f"PostgreSQL not reachable: {e}")
    conn.autocommit = True
    try:
        conn.cursor().execute(f"CREATE DATABASE {name}")
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        conn.cursor().execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.close()


@contextmanager
def mariadb_db() -> Iterator[str]:
    """A new database on 127.0.0.1:3306 (user root, no password): its SQLAlchemy URI."""
    pymysql = pytest.importorskip("pymysql")
    name = _db_name()
    try:
        conn = pymysql.connect(
            host="127.0.0.1", port=3306, user="root", password="", connect_timeout=3, autocommit=True
        )
    except pymysql.err.OperationalError as e:
        pytest.skip(f"MariaDB not reachable: {e}")
    try:
        conn.cursor().execute(f"CREATE DATABASE {name}")
        yield f"mysql+pymysql://root@127.0.0.1:3306/{name}"
    finally:
        conn.cursor().execute(f"DROP DATABASE IF EXISTS {name}")
        conn.close()


DATABASES = {"postgresql": postgres_db, "mariadb": mariadb_db}


def _start(backend: str, workdir: Path, workers: int) -> tuple[subprocess.Popen, str, Path] | None:
    """A healthy server, or None when it exited at startup (its port was taken meanwhile)."""
    port = free_port()
    log = workdir / f"mlflow-server-{port}.log"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            backend,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(workers),
            "--default-artifact-root",
            str(workdir / "artifacts"),
        ],
        # A file, not a pipe: nobody reads the server's output while it runs, and a full pipe
        # would block it.
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + HEALTH_TIMEOUT_S
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"{uri}/health", timeout=2)
            return proc, uri, log
        except OSError:
            if proc.poll() is not None:
                return None
            time.sleep(0.5)
    proc.kill()
    pytest.fail(f"mlflow server did not become healthy in {HEALTH_TIMEOUT_S} s: {log.read_text()[-3000:]}")


@contextmanager
def mlflow_server(backend: str, workdir: Path, *, workers: int = 1) -> Iterator[tuple[str, Path]]:
    """(URI, log file) of a `mlflow server` on `backend`, stopped on exit. `workers` > 1 lets
    requests from concurrent clients really interleave."""
    workdir.mkdir(parents=True, exist_ok=True)
    for _ in range(START_ATTEMPTS):
        started = _start(backend, workdir, workers)
        if started is not None:
            break
    else:
        logs = "\n".join(p.read_text()[-1500:] for p in workdir.glob("mlflow-server-*.log"))
        pytest.fail(f"mlflow server exited at startup {START_ATTEMPTS} times: {logs}")
    proc, uri, log = started
    try:
        yield uri, log
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def mlflow_server_on(kind: str, workdir: Path, *, workers: int = 1) -> Iterator[tuple[str, Path]]:
    """A server on a fresh database of `kind` ("postgresql" or "mariadb"), dropped afterwards."""
    with DATABASES[kind]() as backend, mlflow_server(backend, workdir, workers=workers) as served:
        yield served
