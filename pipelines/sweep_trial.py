"""One sweep trial: load -> format -> tokenize -> train -> evaluate, registering nothing.

The same steps with the same inputs as `sft_pipeline`, so ZenML's cache serves the data steps
to every trial after the first, and the final run with the best values (the normal pipeline)
is served this trial's training and evaluation and only registers.
"""

from __future__ import annotations

from zenml import pipeline

from pipelines._data import load, train_and_evaluate
from tuneline.config import PipelineConfig


@pipeline(name="tuneline_sweep_trial")
def sweep_trial_pipeline(config: PipelineConfig, fingerprints: dict[str, str]) -> None:
    dataset = load(config, fingerprints)
    train_and_evaluate(dataset, config, fingerprints)
