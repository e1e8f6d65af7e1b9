"""The sweep file: which config keys to search, how to score a trial, how to prune and store.

    objective: {metric: eval_loss, direction: minimize}   # default: registry.metric, its direction
    trials: 4
    seed: 0
    pruner: {type: median, warmup_steps: 20, startup_trials: 1}
    overrides: {train.max_steps: 60}                      # every trial, and the final run
    params:
      train.learning_rate: {low: 5.0e-4, high: 5.0e-3, log: true}
      train.batch_size: {choices: [8, 16]}

Every key is checked against the project config the sweep runs on, and every bound and
choice goes through the same `load_config(path, overrides)` a `--set` does, so a sweep whose
space holds a value the config would refuse stops before the first trial, with one error
that lists every problem by `file:line key`.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from tuneline.config import ProjectConfig, load_config
from tuneline.config.base import Section
from tuneline.config.train import LOWER_IS_BETTER, eval_metrics_for
from tuneline.errors import ConfigError, Problem

Scalar = bool | int | float | str | None


class ObjectiveSpec(Section):
    metric: str | None = Field(
        default=None,
        description="A metric the evaluation reports for the fine-tuned model; default registry.metric "
        "(eval_loss when eval.enabled is false).",
    )
    direction: Literal["minimize", "maximize"] | None = Field(
        default=None, description="Default: the metric's own (eval_loss minimizes, scores maximize)."
    )


class PrunerSpec(Section):
    type: Literal["median", "hyperband", "none"] = "median"
    warmup_steps: int = Field(
        default=0, ge=0, description="No trial is pruned before this training step (hyperband: min resource)."
    )
    startup_trials: int = Field(
        default=1, ge=0, description="median: trials that must finish before any is pruned."
    )
    reduction_factor: int = Field(default=3, ge=2, description="hyperband: the halving rate.")


class ParamSpec(Section):
    low: float | None = None
    high: float | None = None
    log: bool = Field(default=False, description="Sample on a log scale (low must be > 0).")
    choices: list[Scalar] | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _range_or_choices(self) -> ParamSpec:
        ranged = self.low is not None or self.high is not None
        if self.choices is not None and (ranged or self.log):
            raise ValueError("give either low/high (and log) or choices, not both")
        if self.choices is None:
            if self.low is None or self.high is None:
                raise ValueError("a range needs both low and high (or give choices: [...])")
            if self.low >= self.high:
                raise ValueError(f"low ({self.low}) must be below high ({self.high})")
            if self.log and self.low <= 0:
                raise ValueError(f"log: true needs low > 0 (got {self.low})")
        return self


class SweepFile(Section):
    objective: ObjectiveSpec = Field(default_factory=ObjectiveSpec)
    trials: int = Field(default=10, gt=0, description="Finished trials the study runs up to.")
    seed: int = Field(default=0, description="Sampler seed: the same history samples the same values.")
    study_name: str | None = Field(default=None, min_length=1, description="Default: the sweep file's name.")
    storage: str | None = Field(
        default=None, description="Study database URL; default SQLite in TUNELINE_HOME (sweeps.db)."
    )
    pruner: PrunerSpec = Field(default_factory=PrunerSpec)
    overrides: dict[str, Scalar] = Field(
        default_factory=dict, description="Fixed dotted.key: value for every trial and the final run."
    )
    params: dict[str, ParamSpec] = Field(min_length=1, description="dotted config key -> range or choices")


@dataclass(frozen=True)
class Param:
    """One searched key: `kind` is "float" or "int" (a range) or "choice"."""

    key: str
    kind: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()


@dataclass
class Sweep:
    """A checked sweep: the file's settings, the objective resolved against the config, and the
    overrides every trial starts from (the command line's `--set`, then the file's)."""

    path: str
    config_path: str
    spec: SweepFile
    metric: str
    direction: str
    params: list[Param]
    base_overrides: list[str] = field(default_factory=list)

    @property
    def study_name(self) -> str:
        return self.spec.study_name or Path(self.path).stem

    @property
    def maximize(self) -> bool:
        return self.direction == "maximize"

    def fingerprint(self) -> str:
        """What a study's values are comparable under: the space, the objective, the project
        config as written (parsed, so comments and layout do not count; defaults the code adds
        later do not either) and every override. A resumed study must match it."""
        written = yaml.safe_load(Path(self.config_path).read_text(encoding="utf-8"))
        ident = {
            "params": [p.__dict__ for p in self.params],
            "metric": self.metric,
            "direction": self.direction,
            "config": written,
            "overrides": self.base_overrides,
        }
        return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:16]


def format_value(value: Any) -> str:
    """A value as `--set` text that parses back to the same value (JSON is YAML)."""
    return json.dumps(value)


def override(key: str, value: Any) -> str:
    return f"{key}={format_value(value)}"


def load_sweep(path: str | Path, config_path: str | Path, cli_overrides: list[str] | None = None) -> Sweep:
    """Read the sweep file and check it against `config_path` (with `cli_overrides`): all
    problems at once, as one ConfigError naming `file:line key`."""
    source = str(path)
    p = Path(path)
    if not p.is_file():
        raise ConfigError([Problem(source, "sweep file not found; pass --sweep PATH to a YAML file")])
    text = p.read_text(encoding="utf-8")
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        raise ConfigError([Problem(where, f"not valid YAML: {getattr(e, 'problem', e)}")]) from e
    if not isinstance(raw, dict):
        raise ConfigError([Problem(source, "top level must be a mapping (objective:, params:, ...)")])
    lines = _line_index(text)
    try:
        spec = SweepFile.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_problems(e, lines, source), source=source) from e
    cli = list(cli_overrides or [])
    base_cfg = load_config(config_path, cli)  # the project config's own errors first, as they are
    problems: list[Problem] = []

    def where(*keys: str) -> str:
        for cut in range(len(keys), 0, -1):
            line = lines.get(keys[:cut])
            if line:
                return f"{source}:{line} {'.'.join(keys)}"
        return f"{source} {'.'.join(keys)}"

    values = base_cfg.model_dump()
    fixed = [override(k, v) for k, v in spec.overrides.items()]
    for key in spec.overrides:
        msg = _unknown_key(values, key)
        if msg:
            problems.append(Problem(where("overrides", key), msg))
    params: list[Param] = []
    for key, ps in spec.params.items():
        msg = _unknown_key(values, key)
        if msg:
            problems.append(Problem(where("params", key), msg))
            continue
        if key in spec.overrides:
            problems.append(Problem(where("params", key), "also fixed under overrides: keep it in one place"))
            continue
        if ps.choices is not None:
            params.append(Param(key, "choice", choices=tuple(ps.choices)))
            continue
        kind = numeric_kind(key, values)
        if kind is None:
            current = _lookup(values, key)
            problems.append(
                Problem(
                    where("params", key),
                    f"a range needs a numeric config key; {key} holds {type(current).__name__} "
                    f"({current!r}): use choices: [...] instead",
                )
            )
            continue
        if kind == "int" and not (float(ps.low).is_integer() and float(ps.high).is_integer()):
            problems.append(
                Problem(where("params", key), f"{key} is an integer key: low and high must be whole numbers")
            )
            continue
        if kind == "int":
            params.append(Param(key, "int", int(ps.low), int(ps.high), ps.log))
        else:
            params.append(Param(key, "float", float(ps.low), float(ps.high), ps.log))
    if not problems:
        problems += _check_values(config_path, cli + fixed, params, where, spec.overrides)
    metric, direction = _objective(base_cfg, spec, where, problems)
    if base_cfg.kind == "preference":
        problems.append(
            Problem(
                f"{config_path} train.method",
                f"sweeps run the SFT pipeline; train.method={base_cfg.train.method} is a preference "
                "method (use lora, qlora, full or cpt)",
            )
        )
    if problems:
        raise ConfigError(problems, source=source)
    return Sweep(
        path=source,
        config_path=str(config_path),
        spec=spec,
        metric=metric,
        direction=direction,
        params=params,
        base_overrides=cli + fixed,
    )


def _objective(cfg: ProjectConfig, spec: SweepFile, where: Any, problems: list[Problem]) -> tuple[str, str]:
    metric = spec.objective.metric or (cfg.registry.metric if cfg.eval.enabled else "eval_loss")
    assert metric is not None  # the config's validator fills registry.metric
    if cfg.eval.enabled:
        scores = cfg.eval.score_keys()
        allowed = (*(scores or ()), *eval_metrics_for(cfg.train.method))
        if scores is not None and metric not in allowed:
            close = difflib.get_close_matches(metric, allowed, 1)
            problems.append(
                Problem(
                    where("objective", "metric"),
                    f"'{metric}' is not reported by evaluation"
                    + (f"; did you mean '{close[0]}'?" if close else "")
                    + f" (reported: {', '.join(allowed)})",
                )
            )
    elif metric != "eval_loss":
        problems.append(
            Problem(
                where("objective", "metric"),
                f"'{metric}' needs evaluation, and eval.enabled is false: use eval_loss "
                "(from training's validation split) or enable eval",
            )
        )
    if spec.objective.direction:
        direction = spec.objective.direction
    elif metric == cfg.registry.metric and cfg.registry.greater_is_better is not None:
        direction = "maximize" if cfg.registry.greater_is_better else "minimize"
    else:
        direction = "minimize" if metric in LOWER_IS_BETTER else "maximize"
    return metric, direction


def _check_values(
    config_path: str | Path, base: list[str], params: list[Param], where: Any, fixed: dict[str, Any]
) -> list[Problem]:
    """Load the config with the fixed overrides, then with each bound and each choice: a value
    the config refuses is reported at its line in the sweep file with the config's reason."""
    problems: list[Problem] = []
    try:
        load_config(config_path, base)
    except ConfigError as e:
        for pr in e.problems:
            key = next((k for k in fixed if k in pr.where), None)
            problems.append(Problem(where("overrides", key) if key else str(pr.where), pr.message))
        return problems
    for p in params:
        probes: list[tuple[str, Any]] = (
            [(str(i), c) for i, c in enumerate(p.choices)]
            if p.kind == "choice"
            else [("low", p.low), ("high", p.high)]
        )
        for label, value in probes:
            try:
                load_config(config_path, [*base, override(p.key, value)])
            except ConfigError as e:
                for pr in e.problems:
                    problems.append(
                        Problem(
                            where("params", p.key, *(("choices", label) if p.kind == "choice" else (label,))),
                            f"{p.key}={format_value(value)}: {pr.message}",
                        )
                    )
    return problems


def _lookup(values: dict[str, Any], key: str) -> Any:
    node: Any = values
    for part in key.split("."):
        node = node[part]
    return node


def _unknown_key(values: dict[str, Any], key: str) -> str | None:
    """None if `key` names a value of the resolved config, else what is wrong and the closest keys."""
    node: Any = values
    parts = key.split(".")
    for i, part in enumerate(parts):
        if not isinstance(node, dict) or part not in node:
            prefix = ".".join(parts[:i])
            known = [f"{prefix}.{k}" if prefix else k for k in node] if isinstance(node, dict) else []
            close = difflib.get_close_matches(key, known, 1) or difflib.get_close_matches(
                key, _leaf_keys(values), 1
            )
            return f"unknown config key '{key}'" + (f"; did you mean '{close[0]}'?" if close else "")
        node = node[part]
    if isinstance(node, dict) and node:
        return f"'{key}' is a section; name one of its keys, e.g. {key}.{next(iter(node))}"
    return None


def _leaf_keys(values: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k, v in values.items():
        dotted = f"{prefix}{k}"
        out += _leaf_keys(v, f"{dotted}.") if isinstance(v, dict) and v else [dotted]
    return out


def numeric_kind(key: str, values: dict[str, Any]) -> str | None:
    """ "float", "int" or None (not numeric), from the schema's type for the key, or for keys in
    a free-form mapping (model.from_config.*) from the value the config holds."""
    model: Any = ProjectConfig
    parts = key.split(".")
    for i, part in enumerate(parts):
        fields = getattr(model, "model_fields", None)
        if fields is None or part not in fields:
            break
        ann = fields[part].annotation
        if i == len(parts) - 1:
            return _kind_of_annotation(ann)
        nested = _section(ann)
        if nested is None:
            break
        model = nested
    value = _lookup(values, key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return "int" if isinstance(value, int) else "float"


def _kind_of_annotation(ann: Any) -> str | None:
    args = set(typing.get_args(ann)) or {ann}
    if float in args:
        return "float"
    if int in args and bool not in args:
        return "int"
    return None


def _section(ann: Any) -> type[Section] | None:
    if isinstance(ann, type) and issubclass(ann, Section):
        return ann
    for arg in typing.get_args(ann):
        found = _section(arg)
        if found is not None:
            return found
    return None


def _line_index(text: str) -> dict[tuple[str, ...], int]:
    from tuneline.config import _line_index as index

    return index(text)


def _problems(err: ValidationError, lines: dict[tuple[str, ...], int], source: str) -> list[Problem]:
    problems = []
    for e in err.errors():
        loc = tuple(str(p) for p in e["loc"] if isinstance(p, int) or not any(c in str(p) for c in "[]()"))
        dotted = ".".join(loc) or "(top level)"
        line = next((lines[loc[:cut]] for cut in range(len(loc), 0, -1) if loc[:cut] in lines), None)
        where = f"{source}:{line} {dotted}" if line else f"{source} {dotted}"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            model = _spec_model(loc)
            known = list(getattr(model, "model_fields", {}))
            close = difflib.get_close_matches(loc[-1], known, 1)
            msg = f"unknown key '{loc[-1]}'" + (
                f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(known)}"
            )
        elif e["type"] == "missing":
            msg = "required key is missing"
        elif "input" in e and not isinstance(e["input"], (dict, list)) and len(repr(e["input"])) <= 80:
            msg = f"{msg} (got {e['input']!r})"
        problems.append(Problem(where, msg))
    return problems


def _spec_model(loc: tuple[str, ...]) -> Any:
    """The sweep-file model that holds the last key of `loc` (params.<key>.* -> ParamSpec)."""
    if loc[:1] == ("params",):
        return ParamSpec
    model: Any = SweepFile
    for part in loc[:-1]:
        f = model.model_fields.get(part)
        nested = _section(f.annotation) if f is not None else None
        if nested is None:
            break
        model = nested
    return model
