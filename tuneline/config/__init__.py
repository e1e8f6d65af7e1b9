"""One typed project config: YAML values, command-line overrides, all errors at once.

`load_config(path, overrides)` is the only entry point the CLI needs. Errors carry
the YAML file:line and the dotted key path so a person can find them.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Self

import yaml
from pydantic import Field, ValidationError, model_validator

from tuneline.config.base import Section
from tuneline.config.data import DataConfig, SourceConfig
from tuneline.config.evaluate import EvalConfig, RegistryConfig, TrackingConfig
from tuneline.config.model import ModelConfig
from tuneline.config.openai_backend import check_openai_project
from tuneline.config.retrain import RetrainConfig
from tuneline.config.template import TemplateConfig, TokenizeConfig
from tuneline.config.train import (
    LOWER_IS_BETTER,
    METHOD_KIND,
    RENAMED_METRICS,
    LoraConfig,
    PreferenceConfig,
    ResourcesConfig,
    TrainConfig,
    default_metric_for,
    eval_metrics_for,
)
from tuneline.errors import ConfigError, Problem

__all__ = [
    "DataConfig",
    "EvalConfig",
    "EvalStage",
    "LoraConfig",
    "ModelConfig",
    "PipelineConfig",
    "PreferenceConfig",
    "ProjectConfig",
    "RegistryConfig",
    "ResourcesConfig",
    "SourceConfig",
    "TemplateConfig",
    "TokenizeConfig",
    "TrackingConfig",
    "TrainConfig",
    "TrainStage",
    "load_config",
    "parse_override",
]


class ProjectConfig(Section):
    name: str = Field(default="tuneline", description="Run/pipeline name prefix.")
    model: ModelConfig
    data: DataConfig
    template: TemplateConfig = Field(default_factory=TemplateConfig)
    tokenize: TokenizeConfig = Field(default_factory=TokenizeConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    retrain: RetrainConfig = Field(default_factory=RetrainConfig)

    # Directory relative paths in the config resolve against (the config file's project root).
    base_dir: str = Field(default=".", description="Set by the loader: relative paths resolve here.")

    @model_validator(mode="after")
    def _backend_fits(self) -> ProjectConfig:
        """Before the registry metric is defaulted or checked: eval_loss is refused by name."""
        check_openai_project(self)
        return self

    @model_validator(mode="after")
    def _registry_metric_fits_method(self) -> ProjectConfig:
        """A metric evaluation never reports would only fail after training; catch it here."""
        kind = METHOD_KIND[self.train.method]
        scores = self.eval.score_keys() if kind == "chat" else ()
        allowed = (*(scores or ()), *eval_metrics_for(self.train.method))
        if self.registry.metric is None:
            self.registry.metric = default_metric_for(self.train.method) or allowed[0]
        metric = self.registry.metric
        if metric not in allowed and not (scores is None and metric not in RENAMED_METRICS):
            hint = RENAMED_METRICS.get(metric) or next(
                iter(difflib.get_close_matches(metric, allowed, 1)), None
            )
            raise ValueError(
                f"registry.metric: '{metric}' is not reported for train.method={self.train.method}"
                + (f" with eval.metrics {self.eval.metrics}" if kind == "chat" else "")
                + (f"; did you mean '{hint}'?" if hint else "")
                + f" (reported: {', '.join(allowed)})"
            )
        lower = self.registry.metric in LOWER_IS_BETTER
        if self.registry.greater_is_better is None:
            self.registry.greater_is_better = not lower
        elif self.registry.greater_is_better == lower:
            raise ValueError(
                f"registry.greater_is_better: {self.registry.metric} is "
                f"{'lower' if lower else 'higher'}-is-better; set greater_is_better: {str(not lower).lower()}"
            )
        tie = self.registry.tie_break_metric
        if tie is not None:
            # The gate breaks ties on a higher-is-better metric other than the deciding one.
            usable = [m for m in allowed if m not in LOWER_IS_BETTER and m != metric]
            if tie not in usable:
                raise ValueError(
                    f"registry.tie_break_metric: '{tie}' cannot break ties on {metric} for "
                    f"train.method={self.train.method}; use one of: {', '.join(usable) or '(none)'}, "
                    "or remove the key"
                )
        return self

    @property
    def kind(self) -> str:
        return METHOD_KIND[self.train.method]

    def resolve_path(self, p: str) -> str:
        """Relative paths are relative to base_dir; hub names and absolute paths pass through."""
        path = Path(p).expanduser()
        if path.is_absolute():
            return str(path)
        cand = Path(self.base_dir) / path
        return str(cand)


class TrainStage(Section):
    """The sections training reads, and all a train step receives: a change to eval or
    registry settings leaves its cache key, and so the trained model, untouched."""

    name: str
    base_dir: str
    model: ModelConfig
    data: DataConfig
    template: TemplateConfig
    tokenize: TokenizeConfig
    train: TrainConfig

    @classmethod
    def of(cls, cfg: TrainStage | ProjectConfig) -> Self:
        return cls.model_validate({k: getattr(cfg, k) for k in cls.model_fields})

    @property
    def kind(self) -> str:
        return METHOD_KIND[self.train.method]

    def project(self) -> ProjectConfig:
        """A ProjectConfig for the core functions that take one; sections this stage does
        not hold keep their defaults, which the code of this stage never reads."""
        return ProjectConfig.model_validate({k: getattr(self, k) for k in type(self).model_fields})


class EvalStage(TrainStage):
    """What evaluation reads: training's sections (to rebuild the base model), `eval`, and
    `registry` (which champion to score on the same eval set, which metric ranks samples)."""

    eval: EvalConfig
    registry: RegistryConfig


class PipelineConfig(EvalStage):
    """The whole config except `tracking`: the parameters of a pipeline run and of the
    register step. A tracking URI may carry credentials and no step reads it (the stack's
    experiment tracker holds the URI, secrets live in ZenML secrets)."""


def _line_index(text: str) -> dict[tuple[str, ...], int]:
    """Map each key path in the YAML to its 1-based line, so errors can point at it."""
    index: dict[tuple[str, ...], int] = {}

    def walk(node: Any, path: tuple[str, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                key = (*path, str(k.value))
                index[key] = k.start_mark.line + 1
                walk(v, key)
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                key = (*path, str(i))
                index[key] = v.start_mark.line + 1
                walk(v, key)

    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return index
    walk(root, ())
    return index


def parse_override(expr: str) -> tuple[list[str], Any]:
    """`train.learning_rate=1e-4` -> (['train', 'learning_rate'], 1e-4), value parsed as YAML."""
    if "=" not in expr:
        raise ConfigError([Problem(f"--set {expr}", "expected dotted.key=value, e.g. train.max_steps=10")])
    key, raw = expr.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError([Problem(f"--set {expr}", "empty key; expected dotted.key=value")])
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    # YAML reads 1e-4 as a string (no dot); the schema decides the type, so try float here.
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value for c in "eE.") else value
        except ValueError:
            pass
    return key.split("."), value


def _apply_override(data: dict[str, Any], path: list[str], value: Any) -> None:
    node: Any = data
    for part in path[:-1]:
        if isinstance(node, list):
            node = node[int(part)]
            continue
        if not isinstance(node.get(part), (dict, list)):
            node[part] = {}
        node = node[part]
    if isinstance(node, list):
        node[int(path[-1])] = value
    else:
        node[path[-1]] = value


def _model_for(path: tuple[Any, ...]) -> type[Section] | None:
    """Walk the schema along a key path to find which model holds its last key."""
    model: Any = ProjectConfig
    for part in path[:-1]:
        if isinstance(part, int):
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return None
        ann = field.annotation
        nested = _section_in(ann)
        if nested is None:
            return None
        model = nested
    return model


def _section_in(ann: Any) -> type[Section] | None:
    import typing

    if isinstance(ann, type) and issubclass(ann, Section):
        return ann
    for arg in typing.get_args(ann):
        found = _section_in(arg)
        if found is not None:
            return found
    return None


def _problems_from(err: ValidationError, lines: dict[tuple[str, ...], int], source: str) -> list[Problem]:
    problems = []
    for e in err.errors():
        loc = tuple(e["loc"])
        # Drop pydantic's union-branch labels like "list[str]" from the path.
        loc = tuple(p for p in loc if isinstance(p, int) or not any(c in str(p) for c in "[]()"))
        msg_raw = e["msg"].removeprefix("Value error, ")
        if not loc and ": " in msg_raw and " " not in msg_raw.split(": ", 1)[0]:
            key, msg_raw = msg_raw.split(": ", 1)
            loc = tuple(key.split("."))
            e = {**e, "msg": msg_raw}
        dotted = ".".join(str(p) for p in loc) or "(top level)"
        line = None
        for cut in range(len(loc), 0, -1):
            line = lines.get(tuple(str(p) for p in loc[:cut]))
            if line:
                break
        where = f"{source}:{line} {dotted}" if line else dotted
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            model = _model_for(loc)
            known = list(getattr(model, "model_fields", {}).keys()) if model else []
            known = [k for k in known if k != "base_dir"]
            close = difflib.get_close_matches(str(loc[-1]), known, n=1)
            msg = f"unknown key '{loc[-1]}'"
            msg += f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(known)}"
        elif e["type"] == "missing":
            msg = "required key is missing"
        elif "input" in e and not isinstance(e["input"], (dict, list)) and len(repr(e["input"])) <= 80:
            msg = f"{msg} (got {e['input']!r})"
        problems.append(Problem(where, msg))
    return problems


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    *,
    data: dict[str, Any] | None = None,
) -> ProjectConfig:
    """Load YAML (or a dict), apply `--set` overrides, validate, report every problem at once."""
    overrides = overrides or []
    lines: dict[tuple[str, ...], int] = {}
    source = "<config>"
    base_dir = Path.cwd()
    if path is not None:
        p = Path(path)
        source = str(path)
        if not p.is_file():
            raise ConfigError(
                [Problem(str(path), "config file not found; pass --config PATH to a YAML file")]
            )
        text = p.read_text(encoding="utf-8")
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"{source}:{mark.line + 1}" if mark else source
            raise ConfigError([Problem(where, f"not valid YAML: {getattr(e, 'problem', e)}")]) from e
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(
                [Problem(source, "top level must be a mapping of sections (model:, data:, ...)")]
            )
        data = loaded
        lines = _line_index(text)
        # Paths in a config resolve against the project root: the parent of configs/.
        base_dir = p.resolve().parent
        if base_dir.name == "configs":
            base_dir = base_dir.parent
    data = dict(data or {})
    for expr in overrides:
        keys, value = parse_override(expr)
        try:
            _apply_override(data, keys, value)
        except (IndexError, ValueError, AttributeError, TypeError) as e:
            raise ConfigError([Problem(f"--set {expr}", f"cannot set this key: {e}")]) from e
    data.setdefault("base_dir", str(base_dir))
    try:
        return ProjectConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_problems_from(e, lines, source), source=source) from e
