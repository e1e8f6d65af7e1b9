"""Pipelines only wire steps; `pipelines.runner` configures and launches them.

Each step gets only the config sections it reads, as a typed section model
(`tuneline.config.TrainStage`, `EvalStage`, `PipelineConfig`), so changing, say, eval
settings re-runs evaluation but never invalidates the cached training step.
"""
