"""Format for the openai backend: the records as the fine-tuning API's chat JSONL files."""

from __future__ import annotations

from typing import Annotated

from zenml import step

from steps._caching import cache_policy
from steps._tracking import log_params
from tuneline.config import TrainStage
from tuneline.data.records import RecordSet


@step(cache_policy=cache_policy(__name__))
def convert_for_openai(dataset: RecordSet, config: TrainStage) -> Annotated[dict, "openai_files"]:
    from tuneline.openai_backend.convert import convert_records

    cfg = config.project()
    files = convert_records(dataset.splits, cfg.tokenize.train_on, validation_split=cfg.eval.split)
    log_params({f"openai.examples.{k}": v for k, v in files.counts.items()})
    return files.as_dict()
