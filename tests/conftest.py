"""Shared test fixtures: real third-party files from ../shared/fixtures, the tiny tokenizer, isolation."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_FIXTURES = Path(os.environ.get("TUNELINE_FIXTURES", ROOT.parent / "shared" / "fixtures"))
TINY_TOKENIZER = ROOT / "assets" / "tiny-tokenizer"

# Tests must never reach the network; make the HF libraries fail fast instead of hanging.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """../shared/fixtures; tests that need it skip cleanly when it is absent."""
    if not SHARED_FIXTURES.is_dir():
        pytest.skip(f"shared fixtures not found at {SHARED_FIXTURES}")
    return SHARED_FIXTURES


def fixture_path(rel: str) -> Path:
    """A path under ../shared/fixtures, skipping the test if that file is missing."""
    p = SHARED_FIXTURES / rel
    if not p.exists():
        pytest.skip(f"fixture {rel} not found under {SHARED_FIXTURES}")
    return p


@pytest.fixture(scope="session")
def tiny_tokenizer_dir() -> Path:
    return TINY_TOKENIZER


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(TINY_TOKENIZER)


@pytest.fixture
def tuneline_home(tmp_path, monkeypatch) -> Path:
    """Isolated TUNELINE_HOME (ZenML store, artifact store, MLflow db) per test."""
    home = tmp_path / "tuneline_home"
    monkeypatch.setenv("TUNELINE_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return home


@pytest.fixture(scope="session")
def empty_mlflow_db(tmp_path_factory) -> Path:
    """An MLflow SQLite store with its schema migrated, once per session: migrating a new store
    takes seconds, copying this file milliseconds. Tests copy it (`mlflow_db`), never write to it."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def mlflow_db(tmp_path, empty_mlflow_db) -> Path:
    """A migrated, empty MLflow SQLite store of this test's own (tmp_path/mlflow.db)."""
    import shutil

    path = tmp_path / "mlflow.db"
    shutil.copyfile(empty_mlflow_db, path)
    return path


# A tiny Llama built from config (no download) for evaluation tests: small enough that
# generating a few answers takes milliseconds.
TINY_EVAL_MODEL = {
    "model_type": "llama",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 128,
}


def chat(question: str, answer: str):
    """One user/assistant exchange as a Record."""
    from tuneline.data.records import Record

    return Record(messages=[{"role": "user", "content": question}, {"role": "assistant", "content": answer}])


def tiny_project(tmp_path: Path, **sections):
    """The config of a project on TINY_EVAL_MODEL, the tiny tokenizer and chatml, its data a
    one-line chat file in tmp_path; each keyword replaces that whole config section."""
    import json

    from tuneline.config import load_config

    data = tmp_path / "d.jsonl"
    messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    data.write_text(json.dumps({"messages": messages}))
    return load_config(
        data={
            "model": {"from_config": TINY_EVAL_MODEL, "tokenizer": str(TINY_TOKENIZER)},
            "data": {"path": str(data)},
            "template": {"name": "chatml"},
            **sections,
        }
    )
