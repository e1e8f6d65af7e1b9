"""Fine-tuning through the OpenAI API: load -> convert -> train_openai -> evaluate -> register."""

from __future__ import annotations

from zenml import pipeline

from pipelines._data import load
from steps.convert_for_openai import convert_for_openai
from steps.evaluate_openai import evaluate_openai
from steps.register_openai_model import register_openai_model
from steps.train_openai import train_openai
from tuneline.config import EvalStage, PipelineConfig, TrainStage


@pipeline(name="tuneline_openai")
def openai_pipeline(config: PipelineConfig, fingerprints: dict[str, str]) -> None:
    dataset = load(config, fingerprints)
    openai_files = convert_for_openai(dataset=dataset, config=TrainStage.of(config))
    openai_model = train_openai(openai_files=openai_files, config=TrainStage.of(config))
    report, _ = evaluate_openai(openai_model=openai_model, dataset=dataset, config=EvalStage.of(config))
    register_openai_model(openai_model=openai_model, eval_report=report, dataset=dataset, config=config)
