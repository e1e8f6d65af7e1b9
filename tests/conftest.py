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
