"""Sweep files, the search space as validated configs, and pruning inside a real tiny training.

The study is a real Optuna study (in memory, or SQLite in tmp_path for the path the train step
takes through the environment); the training is `tuneline.train.train` on a tiny model.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import optuna
import pytest

from tests._train_script import tiny_cfg, tiny_data, tiny_tokenizer
from tuneline.config import load_config
from tuneline.errors import ConfigError
from tuneline.sweep import space
from tuneline.sweep import study as studies
from tuneline.sweep.pruning import (
    ENV,
    PRUNED_ATTR,
    TrialPrunedError,
    reporting_to,
    trial_pruning,
    trial_spec,
)
from tuneline.sweep.schema import load_sweep
from tuneline.sweep.summary import format_study, parallel_coordinates, study_summary
from tuneline.train import train

ROOT = Path(__file__).resolve().parent.parent
SFT = ROOT / "configs" / "sft.yaml"
SWEEPS = sorted((ROOT / "configs" / "sweeps").glob("*.yaml"))

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _sweep(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "sweep.yaml"
    p.write_text(textwrap.dedent(text))
    return p


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_shipped_sweeps_load_against_their_config(path):
    sweep = load_sweep(path, SFT)
    assert sweep.params and sweep.spec.trials >= 1
    for p in sweep.params:  # every bound and choice is a config run.py accepts
        values = list(p.choices) if p.kind == "choice" else [p.low, p.high]
        for v in values:
            space.trial_config(sweep, {p.key: v})


def test_every_problem_is_listed_with_its_line(tmp_path):
    path = _sweep(
        tmp_path,
        """\
        objective:
          metric: rouge_l
        overrides:
          train.max_step: 10
        params:
          train.learning_rat: {low: 1.0e-4, high: 1.0e-2, log: true}
          template.name: {low: 1, high: 2}
          train.batch_size: {low: 1.5, high: 8}
        """,
    )
    with pytest.raises(ConfigError) as err:
        load_sweep(path, SFT)
    msg = str(err.value)
    assert "5 problems" in msg
    assert f"{path}:4 overrides.train.max_step: unknown config key" in msg and "'train.max_steps'" in msg
    assert f"{path}:6 params.train.learning_rat" in msg and "did you mean 'train.learning_rate'" in msg
    assert f"{path}:7 params.template.name: a range needs a numeric config key" in msg
    assert f"{path}:8 params.train.batch_size" in msg and "whole numbers" in msg
    assert f"{path}:2 objective.metric" in msg and "did you mean 'rougeL'" in msg


def test_schema_errors_name_file_line_and_key(tmp_path):
    path = _sweep(
        tmp_path,
        """\
        trials: 0
        pruner: {type: median, warmup_step: 3}
        params:
          train.learning_rate: {low: 0.01, high: 0.001}
          train.batch_size: {choices: [8], low: 1}
        """,
    )
    with pytest.raises(ConfigError) as err:
        load_sweep(path, SFT)
    msg = str(err.value)
    assert f"{path}:1 trials" in msg
    assert f"{path}:2 pruner.warmup_step: unknown key 'warmup_step'; did you mean 'warmup_steps'?" in msg
    assert f"{path}:4 params.train.learning_rate" in msg and "must be below high" in msg
    assert f"{path}:5 params.train.batch_size" in msg and "not both" in msg


def test_values_the_config_refuses_are_reported_before_any_trial(tmp_path):
    path = _sweep(
        tmp_path,
        """\
        params:
          train.warmup_ratio: {low: 0.1, high: 2.0}
          train.batch_size: {choices: [8, 0]}
        """,
    )
    with pytest.raises(ConfigError) as err:
        load_sweep(path, SFT)
    msg = str(err.value)
    assert f"{path}:2 params.train.warmup_ratio.high: train.warmup_ratio=2.0" in msg
    assert f"{path}:3 params.train.batch_size.choices.1: train.batch_size=0" in msg


def test_space_to_overrides_to_validated_configs(tmp_path):
    path = _sweep(
        tmp_path,
        """\
        overrides: {train.max_steps: 12, eval.max_samples: 4}
        params:
          train.learning_rate: {low: 1.0e-4, high: 1.0e-2, log: true}
          train.batch_size: {low: 2, high: 16, log: true}
          tokenize.train_on: {choices: [all_assistant, last_assistant]}
          model.from_config.hidden_size: {choices: [96, 192]}
        """,
    )
    sweep = load_sweep(path, SFT, ["train.seed=7"])
    kinds = {p.key: p.kind for p in sweep.params}
    assert kinds == {
        "train.learning_rate": "float",
        "train.batch_size": "int",
        "tokenize.train_on": "choice",
        "model.from_config.hidden_size": "choice",
    }
    # eval_loss is not registry.metric here: the default objective is rougeL, maximized
    assert (sweep.metric, sweep.direction) == ("rougeL", "maximize")
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    dists = space.distributions(sweep.params)
    for _ in range(3):
        trial = study.ask(dists)
        cfg = space.trial_config(sweep, trial.params)
        assert cfg.train.learning_rate == trial.params["train.learning_rate"]
        assert cfg.train.batch_size == trial.params["train.batch_size"]
        assert cfg.tokenize.train_on == trial.params["tokenize.train_on"]
        assert cfg.model.from_config["hidden_size"] == trial.params["model.from_config.hidden_size"]
        assert (cfg.train.max_steps, cfg.eval.max_samples, cfg.train.seed) == (12, 4, 7)
        # the same config as the command line's --set builds
        v = trial.params
        command_line = [
            "train.seed=7",
            "train.max_steps=12",
            "eval.max_samples=4",
            f"train.learning_rate={v['train.learning_rate']!r}",
            f"train.batch_size={v['train.batch_size']}",
            f"tokenize.train_on={v['tokenize.train_on']}",
            f"model.from_config.hidden_size={v['model.from_config.hidden_size']}",
        ]
        assert cfg == load_config(SFT, command_line)
        study.tell(trial, 0.5)


def test_a_resumed_study_samples_what_an_uninterrupted_one_does(tmp_path):
    path = _sweep(
        tmp_path,
        """\
        params:
          train.learning_rate: {low: 1.0e-4, high: 1.0e-2, log: true}
          train.batch_size: {choices: [4, 8, 16]}
        """,
    )
    sweep = load_sweep(path, SFT)
    fp = sweep.fingerprint()

    def run(url: str, stop_after: int | None) -> list[dict]:
        st = studies.open_study(sweep, studies.open_storage(url), fp)
        studies.recover_interrupted(st)
        while studies.finished_count(st) < 4:
            st = studies.with_sampler(st, sweep)
            trial = st.ask(space.distributions(sweep.params))
            if stop_after is not None and trial.number == stop_after:
                return []  # killed mid-trial: it stays RUNNING
            st.tell(trial, trial.params["train.learning_rate"])
        return [t.params for t in st.trials if studies.counted(t)]

    straight = run(f"sqlite:///{tmp_path / 'a.db'}", None)
    resumed_url = f"sqlite:///{tmp_path / 'b.db'}"
    run(resumed_url, stop_after=2)
    resumed = run(resumed_url, None)
    assert resumed == straight
    trials = optuna.load_study(study_name=sweep.study_name, storage=resumed_url).trials
    assert trials[2].user_attrs[studies.INTERRUPTED_ATTR] and trials[3].user_attrs[studies.RETRY_ATTR] == 2


def test_a_study_for_another_space_is_refused(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    a = load_sweep(_sweep(tmp_path, "params:\n  train.learning_rate: {low: 1.0e-4, high: 1.0e-2}\n"), SFT)
    studies.open_study(a, studies.open_storage(url), a.fingerprint())
    b = load_sweep(_sweep(tmp_path, "params:\n  train.learning_rate: {low: 1.0e-5, high: 1.0e-2}\n"), SFT)
    with pytest.raises(Exception, match="another search space"):
        studies.open_study(b, studies.open_storage(url), b.fingerprint())


def _finished_trial(study, losses: dict[int, float]) -> None:
    study.add_trial(
        optuna.trial.create_trial(
            value=min(losses.values()), intermediate_values=losses, params={}, distributions={}
        )
    )


def _train(tmp_path, **train_kw):
    return train(
        tiny_cfg(eval_steps=1, **train_kw),
        tiny_tokenizer(),
        tiny_data(),
        output_dir=str(tmp_path / "out"),
        checkpoint_dir=str(tmp_path / "ckpt"),
        run_identity={"config_hash": "sweep"},
    )


def test_a_trial_worse_than_the_median_is_pruned_during_training(tmp_path):
    study = optuna.create_study(pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=2))
    _finished_trial(study, {1: 0.0, 2: 0.0, 3: 0.0, 4: 0.0})  # an earlier trial no real loss beats
    trial = study.ask()
    with reporting_to(trial), pytest.raises(TrialPrunedError) as err:
        _train(tmp_path)
    frozen = study.trials[1]
    # step 1 is before the warmup ends: reported, not pruned; step 2 is worse than the median: pruned
    assert sorted(frozen.intermediate_values) == [1, 2]
    assert frozen.user_attrs[PRUNED_ATTR]["step"] == 2 == err.value.step
    assert not (tmp_path / "out").exists()  # no model cut short is handed back
    study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    assert study.trials[1].state == optuna.trial.TrialState.PRUNED


def test_a_good_trial_reports_every_evaluation_and_finishes(tmp_path):
    study = optuna.create_study(pruner=optuna.pruners.MedianPruner(n_startup_trials=1))
    _finished_trial(study, {1: 1e9, 2: 1e9, 3: 1e9, 4: 1e9})
    trial = study.ask()
    with reporting_to(trial):
        result = _train(tmp_path)
    assert result.global_step == 4
    values = study.trials[1].intermediate_values
    assert sorted(values) == [1, 2, 3, 4]  # the final evaluation repeats step 4: reported once
    assert values[4] == pytest.approx(result.metrics["eval_loss"])
    assert PRUNED_ATTR not in study.trials[1].user_attrs


def test_the_train_step_finds_its_trial_through_the_environment(tmp_path, monkeypatch):
    """The path the ZenML step takes: storage, study and trial from TUNELINE_SWEEP_TRIAL."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="s", storage=url, direction="maximize")
    trial = study.ask()
    assert trial_pruning() is None
    monkeypatch.setenv(ENV, trial_spec(url, "s", trial._trial_id, trial.number, {"type": "none"}, True))
    result = _train(tmp_path, max_steps=2)
    reported = optuna.load_study(study_name="s", storage=url).trials[0].intermediate_values
    # maximizing: eval loss is reported negated, so the pruner compares the right way round
    assert sorted(reported) == [1, 2] and all(v < 0 for v in reported.values())
    assert reported[2] == pytest.approx(-result.metrics["eval_loss"])


def test_summary_text_and_plot():
    study = optuna.create_study(direction="minimize")
    dists = {"lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)}
    for lr, value in ((1e-3, 2.0), (3e-3, 1.5)):
        study.add_trial(optuna.trial.create_trial(params={"lr": lr}, distributions=dists, value=value))
    pruned = optuna.trial.create_trial(
        params={"lr": 9e-3},
        distributions=dists,
        state=optuna.trial.TrialState.PRUNED,
        intermediate_values={2: 5.0},
        user_attrs={PRUNED_ATTR: {"step": 2, "eval_loss": 5.0}},
    )
    study.add_trial(pruned)
    summary = study_summary("s", "eval_loss", "minimize", study.trials)
    assert summary["best"]["number"] == 1 and summary["counts"] == {"complete": 2, "pruned": 1}
    text = "\n".join(format_study(summary))
    assert "pruned at step 2" in text and "best: trial 1  eval_loss 1.5  lr=0.003" in text
    json.dumps(summary)  # the parent run's summary.json
    png = parallel_coordinates(summary, {"lr": True})
    assert png is not None and png.startswith(b"\x89PNG")


def test_the_command_exits_2_on_a_bad_sweep_before_anything_runs(tmp_path, tuneline_home, capsys):
    import run

    path = _sweep(tmp_path, "params:\n  train.learnig_rate: {low: 1.0e-4, high: 1.0e-2}\n")
    assert run.main(["sweep", "--config", str(SFT), "--sweep", str(path), "--trials", "2"]) == 2
    err = capsys.readouterr().err
    assert f"{path}:2 params.train.learnig_rate: unknown config key" in err
    assert not tuneline_home.exists()  # no study, no store, no run


def test_a_model_with_versions_but_no_champion_has_none(mlflow_db):
    """A sweep's second final run evaluates against the champion while the first registered only
    a challenger: the SQLite store answers that lookup with INVALID_PARAMETER_VALUE."""
    from mlflow import MlflowClient

    from tuneline.evaluate.judge import find_champion

    client = MlflowClient(tracking_uri=f"sqlite:///{mlflow_db}", registry_uri=f"sqlite:///{mlflow_db}")
    client.create_registered_model("m")
    assert find_champion(client, "m", "champion") == (None, "no version of 'm' holds @champion")
