"""What may pass the registration gate: only evaluated models, decided by a metric evaluation reports."""

from __future__ import annotations

import json

import pytest

from tuneline.config import RegistryConfig, load_config
from tuneline.errors import ConfigError
from tuneline.tracking import registration_refusal


def project(tmp_path, **sections):
    data = tmp_path / "d.jsonl"
    data.write_text(
        json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]})
    )
    return load_config(data={"model": {"name_or_path": "m"}, "data": {"path": str(data)}, **sections})


def test_an_unevaluated_model_is_never_registered():
    reg = RegistryConfig(metric="rougeL", greater_is_better=True)
    refusal = registration_refusal(reg, {}, {}, evaluated=False)
    assert refusal is not None and "eval.enabled" in refusal
    # registry.enabled: false is the way to skip registering on purpose, and it says so first.
    off = RegistryConfig(metric="rougeL", greater_is_better=True, enabled=False)
    assert registration_refusal(off, {}, {}, evaluated=False) == "registry.enabled is false"


def test_registry_metric_follows_eval_metrics_and_names_the_renamed_one(tmp_path):
    assert project(tmp_path).registry.metric == "rougeL"
    assert project(tmp_path, eval={"metrics": ["sacrebleu"]}).registry.metric == "sacrebleu"
    with pytest.raises(ConfigError) as e:
        project(tmp_path, registry={"metric": "rouge_l"})
    assert "registry.metric" in str(e.value) and "did you mean 'rougeL'?" in str(e.value)
    with pytest.raises(ConfigError) as e:
        project(tmp_path, eval={"metrics": ["sacrebleu"]}, registry={"metric": "rougeL"})
    assert "sacrebleu" in str(e.value)
    with pytest.raises(ConfigError) as e:
        project(tmp_path, eval={"metric_kwargs": {"chrf": {}}})
    assert "eval.metric_kwargs" in str(e.value)
