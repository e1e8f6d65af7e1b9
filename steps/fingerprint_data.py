"""Fingerprint the data sources where the pipeline runs, when it runs."""

from __future__ import annotations

from typing import Annotated

from zenml import step

from steps._caching import cache_policy
from tuneline.config import DataConfig
from tuneline.retrain import live_data_fingerprint


@step(enable_cache=False, cache_policy=cache_policy(__name__))
def fingerprint_data(data_config: DataConfig, base_dir: str) -> Annotated[str, "data_fingerprint"]:
    """Never cached: a scheduled run reuses the parameters of the run that created the schedule,
    so the fingerprint computed then says nothing about the data now. The load step is keyed on
    this output, so it re-reads changed data and is served from its cache otherwise."""
    return live_data_fingerprint(data_config, base_dir)
