"""The training pipelines behind `retrain.when: data_changed`: decide first, train only on new data.

ZenML 0.98 runs a static pipeline's whole DAG, so skipping steps on a value known only at run
time takes a dynamic pipeline, whose body runs in the orchestrator's process on every run,
scheduled runs included. The body is still wiring only: the same steps as `sft.py` and
`preference.py`, after `fingerprint_data` (the data as it is now keys the load step) and
`decide_retrain`. A skipped run ends after the decision, with nothing trained, evaluated or
registered. `depends_on` lists every step so the runner configures them (experiment tracker,
resources) as it does for the static pipelines.
"""

from __future__ import annotations

from zenml import pipeline

from pipelines._data import train_and_evaluate, train_and_evaluate_preferences
from steps.decide_retrain import decide_retrain
from steps.evaluate_model import evaluate_model
from steps.evaluate_preferences import evaluate_preferences
from steps.fingerprint_data import fingerprint_data
from steps.format_records import format_records
from steps.load_dataset import load_dataset
from steps.register_model import register_model
from steps.tokenize_dataset import tokenize_dataset
from steps.train_model import train_model
from steps.train_preferences import train_preferences
from tuneline.config import PipelineConfig

_DATA_STEPS = [fingerprint_data, load_dataset, decide_retrain, format_records]


def _load_and_decide(config: PipelineConfig):
    """(dataset, whether to train): the load step keyed on the data as it is now."""
    live = fingerprint_data(data_config=config.data, base_dir=config.base_dir)
    dataset = load_dataset(
        data_config=config.data, base_dir=config.base_dir, source_fingerprint=live, kind=config.kind
    )
    decision = decide_retrain(
        dataset=dataset, model_name=config.registry.model_name, alias=config.registry.alias
    )
    return dataset, bool(decision.load()["train"])


@pipeline(
    name="tuneline_sft_retrain",
    dynamic=True,
    depends_on=[*_DATA_STEPS, tokenize_dataset, train_model, evaluate_model, register_model],
)
def retrain_sft_pipeline(config: PipelineConfig, fingerprints: dict[str, str]) -> None:
    dataset, train = _load_and_decide(config)
    if not train:
        return
    model, report = train_and_evaluate(dataset, config, fingerprints)
    register_model(model=model, eval_report=report, dataset=dataset, config=config)


@pipeline(
    name="tuneline_preference_retrain",
    dynamic=True,
    depends_on=[*_DATA_STEPS, train_preferences, evaluate_preferences, register_model],
)
def retrain_preference_pipeline(config: PipelineConfig, fingerprints: dict[str, str]) -> None:
    dataset, train = _load_and_decide(config)
    if not train:
        return
    model, report = train_and_evaluate_preferences(dataset, config, fingerprints)
    register_model(model=model, eval_report=report, dataset=dataset, config=config)
