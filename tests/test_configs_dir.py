"""Every YAML shipped in configs/ loads and validates: presets can never rot silently."""

from __future__ import annotations

from pathlib import Path

import pytest

from tuneline.config import load_config

CONFIGS = sorted((Path(__file__).resolve().parent.parent / "configs").glob("*.yaml"))


def test_there_are_configs():
    names = {p.name for p in CONFIGS}
    assert {"sft.yaml", "tinyllama-lora.yaml", "qwen2.5-0.5b-lora.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_loads(path):
    cfg = load_config(path)
    assert cfg.registry.model_name
    assert cfg.model.trust_remote_code is False
