"""Concurrent decisions against a real `mlflow server` on PostgreSQL: no file lock can serialise
them, so set-then-verify must leave the better model as champion and one version per weights.

Each test creates its own database and drops it afterwards; skips when PostgreSQL is not reachable.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request

import pytest
from mlflow import MlflowClient

from tests.test_mlflow_server import _free_port, _postgres_db
from tests.test_registry_ops import FP, _alias, assert_better_won, race
from tuneline.registry import list_versions, promote, rollback


def _start_server(backend: str, tmp_path) -> tuple[subprocess.Popen, str] | None:
    """A running server, or None when it exited at startup (its port was taken meanwhile)."""
    port = _free_port()
    log = tmp_path / f"server-{port}.log"
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
            "2",  # two workers: requests from the two runs really interleave
            "--default-artifact-root",
            str(tmp_path / "artifacts"),
        ],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"{uri}/health", timeout=2)
            return proc, uri
        except OSError:
            if proc.poll() is not None:
                return None
            time.sleep(0.5)
    proc.kill()
    pytest.fail(f"mlflow server did not become healthy in 120 s: {log.read_text()[-3000:]}")


@pytest.fixture
def pg_server(tmp_path):
    backend, drop = _postgres_db()
    try:
        for _ in range(3):
            started = _start_server(backend, tmp_path)
            if started is not None:
                break
        else:
            logs = "\n".join(p.read_text()[-1500:] for p in tmp_path.glob("server-*.log"))
            pytest.fail(f"mlflow server exited at startup three times: {logs}")
        proc, uri = started
        try:
            yield uri
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
    finally:
        drop()


@pytest.mark.slow
def test_concurrent_decisions_over_http_converge_on_the_better_champion(pg_server, tmp_path):
    client = MlflowClient(tracking_uri=pg_server, registry_uri=pg_server)
    exp = client.create_experiment("race")
    rounds = 4
    names = [f"race{r}" for r in range(rounds)]
    plans = [
        [(names[r], f"round{r}-proc{i}".encode(), 0.5 + 0.1 * ((i + r) % 2)) for r in range(rounds)]
        # Last round: both runs hold the same weights (an eval-only rerun racing the original).
        + [("same", b"identical weights", 0.4)]
        for i in range(2)
    ]
    results = race(pg_server, exp, tmp_path, plans)
    assert not any(r[5] for r in results)  # a server: no lock, set-then-verify alone
    assert_better_won(client, [r for r in results if r[0] < rounds], names)
    same = [r for r in results if r[0] == rounds]
    assert len({r[3] for r in same}) == 1, same
    assert len(client.search_model_versions("name='same'")) == 1
    assert _alias(client, "champion", "same") == same[0][3]

    # The operations work over HTTP too.
    champion = _alias(client, "champion", names[0])
    other = next(v.version for v in list_versions(client, names[0]) if v.version != champion)
    promote(client, names[0], other, reason="server check", who="ci", registry_uri=pg_server)
    back = rollback(client, names[0], reason="server check", who="ci", registry_uri=pg_server)
    assert back.champion == champion and _alias(client, "champion", names[0]) == champion
    assert list_versions(client, names[0])[0].eval_fingerprint == FP
