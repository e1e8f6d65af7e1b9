"""Pipelines only wire steps; `pipelines.runner` configures and launches them."""

from __future__ import annotations

from typing import Any

# What each stage reads. A step gets only these sections, so changing, say, eval
# settings re-runs evaluation but never invalidates the cached training step.
TRAIN_SECTIONS = ("name", "base_dir", "model", "data", "template", "tokenize", "train")
EVAL_SECTIONS = (*TRAIN_SECTIONS, "eval")
REGISTER_SECTIONS = (*EVAL_SECTIONS, "registry")


def sections(config: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    return {k: config[k] for k in names if k in config}
