"""Config loading, overrides and error reporting (all problems at once, with file:line)."""

from __future__ import annotations

import pytest

from tuneline.config import ProjectConfig, load_config, parse_override
from tuneline.errors import ConfigError

MINIMAL = "model:\n  name_or_path: some/model\ndata:\n  path: data.jsonl\n"


def write(tmp_path, text: str):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_minimal_config_gets_defaults(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL))
    assert isinstance(cfg, ProjectConfig)
    assert cfg.train.method == "lora"
    assert cfg.train.lora.target_modules == "all-linear"
    assert cfg.model.trust_remote_code is False
    assert cfg.base_dir == str(tmp_path)


def test_overrides_are_type_checked_and_applied(tmp_path):
    cfg = load_config(
        write(tmp_path, MINIMAL),
        [
            "train.learning_rate=1e-4",
            "train.max_steps=7",
            "data.path=my.jsonl",
            "train.lora.r=4",
            "train.lora.target_modules=[q_proj,v_proj]",
        ],
    )
    assert cfg.train.learning_rate == pytest.approx(1e-4)
    assert cfg.train.max_steps == 7
    assert cfg.data.path == "my.jsonl"
    assert cfg.train.lora.r == 4
    assert cfg.train.lora.target_modules == ["q_proj", "v_proj"]


def test_bad_override_type_names_the_key(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, MINIMAL), ["train.max_steps=lots"])
    assert "train.max_steps" in str(e.value)


def test_all_problems_reported_at_once_with_lines_and_hints(tmp_path):
    text = MINIMAL + "train:\n  learnig_rate: 0.1\n  batch_size: 0\n  method: sgd\n"
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, text))
    msg = str(e.value)
    assert len(e.value.problems) == 3
    assert "c.yaml:6 train.learnig_rate" in msg and "did you mean 'learning_rate'" in msg
    assert "c.yaml:7 train.batch_size" in msg
    assert "c.yaml:8 train.method" in msg


def test_unknown_section_suggests_the_right_one(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, MINIMAL + "tokenizer:\n  max_length: 5\n"))
    assert "did you mean 'tokenize'" in str(e.value)


def test_missing_required_sections(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, "train:\n  max_steps: 3\n"))
    keys = {p.where for p in e.value.problems}
    assert keys == {"model", "data"}


def test_invalid_yaml_points_at_the_line(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, MINIMAL + "train:\n  max_steps: [1,\n"))
    assert "c.yaml:" in str(e.value) and "not valid YAML" in str(e.value)


def test_missing_file():
    with pytest.raises(ConfigError, match="config file not found"):
        load_config("does/not/exist.yaml")


def test_parse_override_requires_equals():
    with pytest.raises(ConfigError):
        parse_override("train.max_steps")
    assert parse_override("a.b=true") == (["a", "b"], True)
    assert parse_override("a=null") == (["a"], None)


def test_model_source_rules(tmp_path):
    with pytest.raises(ConfigError, match=r"model\.from_config needs model\.tokenizer"):
        load_config(write(tmp_path, "model:\n  from_config: {model_type: llama}\ndata:\n  path: x\n"))


def test_paths_resolve_against_project_root(tmp_path):
    (tmp_path / "configs").mkdir()
    p = tmp_path / "configs" / "x.yaml"
    p.write_text(MINIMAL)
    cfg = load_config(p)
    assert cfg.base_dir == str(tmp_path)
    assert cfg.resolve_path("data.jsonl") == str(tmp_path / "data.jsonl")


def test_stage_configs_hold_only_the_sections_their_steps_read(tmp_path):
    from tuneline.config import EvalConfig, EvalStage, PipelineConfig, TrainStage

    cfg = load_config(
        write(tmp_path, MINIMAL),
        ["eval.max_samples=7", "registry.model_name=m", "tracking.mlflow_tracking_uri=http://u:p@host"],
    )
    train = TrainStage.of(cfg)
    assert set(train.model_dump()) == {"name", "base_dir", "model", "data", "template", "tokenize", "train"}
    assert train.project().eval == EvalConfig() and train.project().train == cfg.train
    assert EvalStage.of(cfg).project().eval.max_samples == 7
    run = PipelineConfig.of(cfg)
    assert "tracking" not in run.model_dump()
    assert run.project().model_dump(exclude={"tracking"}) == cfg.model_dump(exclude={"tracking"})
    assert run.kind == cfg.kind
