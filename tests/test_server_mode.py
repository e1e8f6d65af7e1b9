"""Server mode: tuneline against a real ZenML server (on MariaDB) and a real MLflow server (on
PostgreSQL), both on 127.0.0.1, gives what the embedded default gives.

The ZenML server is ZenML's own FastAPI app under uvicorn, as `zenml login --local` runs it,
on a database of its own. ZenML 0.98 refuses a MySQL/MariaDB URL without a password, so each
test creates a database and a user with a random password for it (as root, which has none
here), and drops both afterwards. The client reaches it the documented way: `ZENML_STORE_URL`
(plus `ZENML_STORE_API_KEY` on a server with authentication; this one runs without).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests._servers import free_port, mlflow_server_on

ROOT = Path(__file__).resolve().parent.parent
SERVER_START_TIMEOUT_S = 240
SERVER_APP = "zenml.zen_server.zen_server_api:app"  # what `zenml login --local` serves

pytestmark = pytest.mark.slow


@contextmanager
def mariadb_zenml_store() -> Iterator[str]:
    """A fresh MariaDB database and a user with a password: ZenML's `mysql://` store URL."""
    pymysql = pytest.importorskip("pymysql")
    suffix = secrets.token_hex(5)
    name, user, password = f"tuneline_zenml_{suffix}", f"tl_{suffix}", secrets.token_urlsafe(16)
    try:
        conn = pymysql.connect(
            host="127.0.0.1", port=3306, user="root", password="", connect_timeout=3, autocommit=True
        )
    except pymysql.err.OperationalError as e:
        pytest.skip(f"MariaDB not reachable: {e}")
    cur = conn.cursor()
    try:
        cur.execute(f"CREATE DATABASE {name}")
        for host in ("127.0.0.1", "localhost"):
            cur.execute(f"CREATE USER '{user}'@'{host}' IDENTIFIED BY %s", (password,))
            cur.execute(f"GRANT ALL ON {name}.* TO '{user}'@'{host}'")
        yield f"mysql://{user}:{password}@127.0.0.1:3306/{name}"
    finally:
        cur.execute(f"DROP DATABASE IF EXISTS {name}")
        for host in ("127.0.0.1", "localhost"):
            cur.execute(f"DROP USER IF EXISTS '{user}'@'{host}'")
        conn.close()


@contextmanager
def zenml_server(store_url: str, workdir: Path) -> Iterator[str]:
    """A ZenML server on 127.0.0.1 over `store_url`, without authentication: its URL."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = workdir / "zenml-server.log"
    env = {
        **os.environ,
        "ZENML_SERVER": "true",
        "ZENML_CONFIG_PATH": str(workdir / "server-config"),
        "ZENML_STORE_URL": store_url,
        "ZENML_SERVER_AUTH_SCHEME": "NO_AUTH",
        "ZENML_SERVER_AUTO_ACTIVATE": "true",
        "ZENML_SERVER_ALLOW_LOCAL_FILE_ACCESS": "true",
        "ZENML_ANALYTICS_OPT_IN": "false",
    }
    env.pop("ZENML_STORE_API_KEY", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", SERVER_APP, "--host", "127.0.0.1", "--port", str(port)],
        cwd=workdir,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + SERVER_START_TIMEOUT_S  # first start: the schema migrations
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    pytest.fail(f"ZenML server did not start: {log.read_text()[-3000:]}")
                time.sleep(1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _config(tmp_path: Path) -> Path:
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join((ROOT / "data" / "lorekeep.jsonl").read_text().splitlines()[:40]) + "\n")
    config = tmp_path / "server.yaml"
    config.write_text(
        json.dumps(
            {
                "model": {
                    "from_config": {
                        "model_type": "llama",
                        "hidden_size": 32,
                        "intermediate_size": 64,
                        "num_hidden_layers": 1,
                        "num_attention_heads": 2,
                        "num_key_value_heads": 1,
                        "max_position_embeddings": 256,
                    },
                    "tokenizer": str(ROOT / "assets" / "tiny-tokenizer"),
                },
                "data": {"path": str(data), "validation_split": 0.2},
                "template": {"name": "chatml"},
                "tokenize": {"max_length": 128},
                "train": {
                    "method": "full",
                    "max_steps": 2,
                    "batch_size": 4,
                    "eval_steps": 2,
                    "save_steps": 2,
                },
                "eval": {"max_samples": 4, "max_new_tokens": 4, "bootstrap_resamples": 50},
                "registry": {"model_name": "server-tiny", "metric": "eval_loss"},
            }
        )
    )
    return config


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "TUNELINE_HOME": str(home), "HF_HUB_OFFLINE": "1", **extra}
    for key in ("MLFLOW_TRACKING_URI", "ZENML_CONFIG_PATH", "ZENML_STORE_URL", "ZENML_STORE_API_KEY"):
        if key not in extra:
            env.pop(key, None)
    return env


def _run(env: dict[str, str], *args: str) -> str:
    r = subprocess.run(
        [sys.executable, "run.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    return r.stdout


def _results(stdout: str) -> dict:
    """What a run's summary says, less the names that differ between runs (run name, store)."""
    lines = stdout.splitlines()
    table = [line for line in lines if line.strip().split(" ")[0] in ("eval_loss", "rougeL", "exact_match")]
    return {
        "status": next(line for line in lines if line.startswith("Run ")).split(": ")[-1],
        "executed": next(line for line in lines if "executed steps" in line).strip(),
        "metrics": table,
        "registered": next(line for line in lines if "registered models:/" in line).strip(),
    }


_ZENML_QUERY = """
import json, sys
from pipelines.stack import configure_environment
configure_environment()
from zenml.client import Client
c = Client()
runs = c.list_pipeline_runs(size=50, sort_by="asc:created")
mv = c.get_model_version("server-tiny", "1")
print(json.dumps({
    "store": c.zen_store.url,
    "runs": [(r.name, r.status.value) for r in runs],
    "model_version": [mv.name, getattr(mv.stage, "value", mv.stage)],
}))
"""


def test_a_run_against_zenml_and_mlflow_servers_matches_the_embedded_default(tmp_path):
    config = _config(tmp_path)
    embedded = _results(_run(_env(tmp_path / "embedded"), "--config", str(config)))

    with (
        mariadb_zenml_store() as store_url,
        zenml_server(store_url, tmp_path / "zenml-server") as zenml_url,
        mlflow_server_on("postgresql", tmp_path / "mlflow-server") as (mlflow_uri, _),
    ):
        env = _env(tmp_path / "client", ZENML_STORE_URL=zenml_url, MLFLOW_TRACKING_URI=mlflow_uri)
        served_out = _run(env, "--config", str(config))
        served = _results(served_out)
        assert served == embedded
        assert served["registered"].startswith("registered models:/server-tiny/1: promoted to @champion")
        assert f"MLflow tracking server: {mlflow_uri}" in served_out

        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=mlflow_uri, registry_uri=mlflow_uri)
        assert str(client.get_model_version_by_alias("server-tiny", "champion").version) == "1"

        # The same data again under `retrain.when: data_changed`: decided against the server's champion.
        skipped = _run(env, "--config", str(config), "--set", "retrain.when=data_changed")
        assert "skipped: data unchanged since champion v1" in skipped
        assert [str(v.version) for v in client.search_model_versions("name='server-tiny'")] == ["1"]

        script = tmp_path / "query_zenml.py"
        script.write_text(_ZENML_QUERY)
        r = subprocess.run(
            [sys.executable, str(script)],
            cwd=ROOT,
            env={**env, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert r.returncode == 0, r.stderr[-3000:]
        seen = json.loads(r.stdout.strip().splitlines()[-1])
        assert seen["store"] == zenml_url
        assert [status for _, status in seen["runs"]] == ["completed", "completed"]
        assert seen["runs"][0][0].startswith("tuneline_sft-") and seen["runs"][1][0].startswith(
            "tuneline_sft_retrain-"
        )
        assert seen["model_version"] == ["1", "production"]
