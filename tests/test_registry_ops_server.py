"""Concurrent decisions against a real `mlflow server` on PostgreSQL: no file lock can serialise
them, so set-then-verify must leave the better model as champion and one version per weights.

Each test gets its own database and server (`tests/_servers.py`); skips when PostgreSQL is not
reachable.
"""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

from tests._servers import mlflow_server_on
from tests.test_registry_ops import FP, _alias, assert_better_won, race
from tuneline.registry import list_versions, promote, rollback


@pytest.fixture
def pg_server(tmp_path):
    # Two workers: requests from the two racing processes really interleave.
    with mlflow_server_on("postgresql", tmp_path, workers=2) as (uri, _log):
        yield uri


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
