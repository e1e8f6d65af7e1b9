"""A registered version is an MLflow pyfunc chat model: `mlflow.pyfunc.load_model` answers what
`run.py generate` answers, and (slow tier) `mlflow models serve` answers the same over HTTP.

The version is logged and registered as the register step does it (`log_chat_model`, then
`register_and_decide`) in a real SQLite store. The model is a LoRA on a local base the config
names by a relative path, so the version only loads from another directory if logging pinned
the base to its absolute path; the base's weights are random, so answers are arbitrary token
strings and two code paths agreeing on them is telling.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import mlflow
import pytest
from mlflow import MlflowClient

from run import main
from tests._serve_models import random_base, train_on

ROOT = Path(__file__).resolve().parent.parent
NAME = "serve-tiny"
CHAMPION = f"models:/{NAME}@champion"
QUESTIONS = ["Name the capital city of Velan.", "Who rules?", "Describe the banner of Fenume in a few words."]
CONVERSATIONS = [[{"role": "user", "content": q}] for q in QUESTIONS]
PARAMS = {"max_new_tokens": 6}


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    from tuneline.registry import Candidate, PromotionPolicy, Scored, register_and_decide, weights_sha256
    from tuneline.serve.mlflow_model import log_chat_model

    root = tmp_path_factory.mktemp("serve-pyfunc")
    random_base(root / "base")
    lora, cfg = train_on("base", root / "lora", "lora", base_dir=root)
    assert json.loads((lora / "tuneline_train.json").read_text())["base_model"]["name_or_path"] == "base"
    home = root / "home"
    home.mkdir()
    uri = f"sqlite:///{home / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    try:
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        exp = client.create_experiment("serve", artifact_location=(root / "artifacts").as_uri())
        with mlflow.start_run(experiment_id=exp) as run:
            source = log_chat_model(lora, cfg)
        fp = "serve-evalset"
        result = register_and_decide(
            client,
            NAME,
            Candidate(
                source=source,
                run_id=run.info.run_id,
                weights_sha256=weights_sha256(lora),
                scores=Scored({"rougeL": 0.5}, fp),
                base=Scored({"rougeL": 0.1}, fp),
            ),
            PromotionPolicy(metric="rougeL"),
            registry_uri=uri,
        )
    finally:
        mlflow.set_tracking_uri("")
    assert result.promoted
    return SimpleNamespace(root=root, home=home, uri=uri, lora=lora, source=source)


@pytest.fixture
def registry(registered, monkeypatch, tmp_path):
    """The registry as a user's shell has it (TUNELINE_HOME), from another working directory."""
    monkeypatch.setenv("TUNELINE_HOME", str(registered.home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(registered.uri)
    yield registered
    mlflow.set_tracking_uri("")


def _generate(capsys, *extra: str) -> list[str]:
    args = ["generate", "--model", CHAMPION, "--json", "--max-new-tokens", str(PARAMS["max_new_tokens"])]
    for q in QUESTIONS:
        args += ["--prompt", q]
    assert main([*args, *extra]) == 0, capsys.readouterr().err
    return [json.loads(line)["answer"] for line in capsys.readouterr().out.splitlines()]


def test_the_champion_loads_with_pyfunc_and_answers_like_generate(registry, capsys):
    import pandas as pd

    from tuneline.registry import weights_sha256
    from tuneline.tracking import download_model_version

    model = mlflow.pyfunc.load_model(CHAMPION)
    answers = model.predict([{"messages": c} for c in CONVERSATIONS], params=PARAMS)
    assert answers == _generate(capsys)
    assert any(answers), "arbitrary but non-empty answers, or the comparison proves little"
    # One conversation as a dict, and the DataFrame a `dataframe_records` request becomes.
    assert model.predict({"messages": CONVERSATIONS[0]}, params=PARAMS) == answers[:1]
    assert model.predict(pd.DataFrame({"messages": CONVERSATIONS}), params=PARAMS) == answers
    # A system turn from the request params, as `--system` gives it.
    system = {**PARAMS, "system": "Answer in one word."}
    assert (
        model.predict({"messages": CONVERSATIONS[0]}, params=system)
        == _generate(capsys, "--system", "Answer in one word.")[:1]
    )

    # The version's files: the trained directory under artifacts/hf_model, weights untouched,
    # the relative base pinned to its absolute path, the serving settings beside it.
    client = MlflowClient(tracking_uri=registry.uri, registry_uri=registry.uri)
    hf = Path(download_model_version(client, CHAMPION, str(registry.root / "cache")))
    assert hf.parts[-2:] == ("artifacts", "hf_model")
    assert weights_sha256(hf) == weights_sha256(registry.lora)
    base = json.loads((hf / "tuneline_train.json").read_text())["base_model"]
    assert base["name_or_path"] == str((registry.root / "base").resolve())
    assert json.loads((hf / "tuneline_serve.json").read_text())["tokenize"]["max_length"] > 0
    requirements = (hf.parent.parent / "requirements.txt").read_text()
    assert "transformers==" in requirements and "mlflow==" in requirements and "+cpu" not in requirements
    assert (hf.parent.parent / "code" / "tuneline" / "serve" / "pyfunc.py").is_file()


def test_bad_requests_are_refused_with_what_to_send(registry):
    from tuneline.errors import UserError

    model = mlflow.pyfunc.load_model(CHAMPION)
    with pytest.raises(UserError, match="last message must be the user's"):
        model.predict({"messages": [{"role": "assistant", "content": "hi"}]}, params=PARAMS)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_mlflow_models_serve_answers_the_chat_payload_over_http(registry, tmp_path):
    import requests
    import torch

    port = _free_port()
    venv_bin = str(Path(sys.executable).parent)
    mlflow_cli = shutil.which("mlflow", path=venv_bin)
    env = {
        **os.environ,
        # `mlflow models serve` execs `uvicorn` from PATH, as in an activated virtualenv.
        "PATH": os.pathsep.join([venv_bin, os.environ.get("PATH", "")]),
        "MLFLOW_TRACKING_URI": registry.uri,
        "HF_HUB_OFFLINE": "1",
        # The same thread count as this process: the same float reductions, the same greedy tokens.
        "OMP_NUM_THREADS": str(torch.get_num_threads()),
    }
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen(
        [
            mlflow_cli,
            "models",
            "serve",
            "-m",
            CHAMPION,
            "--env-manager",
            "local",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240
        while True:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-4000:]
            try:
                if requests.get(f"http://127.0.0.1:{port}/ping", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-4000:]
            time.sleep(1)
        expected = mlflow.pyfunc.load_model(CHAMPION).predict({"messages": CONVERSATIONS[0]}, params=PARAMS)
        r = requests.post(
            f"http://127.0.0.1:{port}/invocations",
            json={"messages": CONVERSATIONS[0], **PARAMS},
            timeout=120,
        )
        assert r.status_code == 200, r.text
        assert r.json() == expected
        # The classic records payload gives the same answers, wrapped in "predictions".
        r = requests.post(
            f"http://127.0.0.1:{port}/invocations",
            json={"dataframe_records": [{"messages": c} for c in CONVERSATIONS], "params": PARAMS},
            timeout=120,
        )
        assert r.status_code == 200, r.text
        assert r.json()["predictions"][0] == expected[0] and len(r.json()["predictions"]) == len(QUESTIONS)
    finally:
        _stop(server)
        log.close()


def _stop(server: subprocess.Popen) -> None:
    """The server and the uvicorn worker it started (its own process group)."""
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, None)):
        try:
            os.killpg(server.pid, sig)
        except ProcessLookupError:
            pass
        try:
            server.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue
