"""Stack recipes: the cloud a pipeline runs on, as one YAML file a person edits.

A recipe names every stack component (orchestrator, artifact store, container registry, image
builder, MLflow tracker and registry, optionally a step operator), the GPU that the training and
evaluation steps get, the container the steps run in, and the ZenML secrets they read. Moving a
pipeline from the laptop to a GPU cluster is choosing a recipe, not editing code.

This module is the pure half: schema, validation (secrets, placeholders, cron), and the per-step
settings as plain dicts. `pipelines/cloud.py` turns them into ZenML objects; the core never
imports ZenML.
"""

from __future__ import annotations

import re
import shlex
import sys
import tomllib
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from tuneline.errors import ConfigError, Problem, UserError
from tuneline.home import PROJECT_ROOT

# Steps that get the GPU when present in the pipeline: training and evaluation (generation on the
# held-out set); loading, formatting, tokenizing and registering stay on CPU nodes.
GPU_STEPS = ("train_model", "evaluate_model", "train_preferences", "evaluate_preferences")

# Orchestrators that run steps in this process or a local container: no cloud, no schedules.
LOCAL_ORCHESTRATORS = ("local", "local_docker")
# Orchestrators whose ZenML 0.98 scheduling takes only a cron expression.
CRON_ONLY = ("kubernetes", "vertex")
# How each orchestrator receives a step's GPU: Kubernetes ignores ResourceSettings (its pods get
# `nvidia.com/gpu` limits from pod_settings); Vertex and SageMaker read ResourceSettings / their
# own settings.
GPU_ORCHESTRATORS = ("kubernetes", "vertex", "sagemaker")
GPU_STEP_OPERATORS = ("kubernetes", "vertex", "sagemaker", "azureml", "modal", "spark-kubernetes")

# A `{{secret_name.key}}` reference to a ZenML secret, the only form a secret value may take.
SECRET_REF = re.compile(r"^\{\{\s*[A-Za-z0-9_.-]+\.[A-Za-z0-9_-]+\s*\}\}$")
# Config keys that hold credentials; their values must be secret references.
SECRET_KEY = re.compile(
    r"(token|password|passwd|secret|api_key|access_key|private_key|credentials?|auth_key)$", re.I
)
# Values that look like a credential wherever they appear (HF, AWS, GitHub, OpenAI, GCP keys).
SECRET_VALUE = re.compile(
    r"(^hf_[A-Za-z0-9]{20,}$)|(^(AKIA|ASIA)[A-Z0-9]{16}$)|(^gh[pousr]_[A-Za-z0-9]{20,}$)"
    r"|(^sk-[A-Za-z0-9_-]{20,}$)|(-----BEGIN [A-Z ]*PRIVATE KEY-----)|(\"private_key\")"
)
# Values the user must fill in before the recipe can run: <PROJECT_ID>, <BUCKET>, ...
PLACEHOLDER = re.compile(r"<[A-Z][A-Z0-9_]*>")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class ComponentRecipe(_Strict):
    """One stack component: a ZenML flavor and its configuration (validated against the flavor's
    own config class when the stack is built)."""

    flavor: str
    name: str | None = Field(default=None, description="component name; default: <stack>-<type>")
    config: dict[str, Any] = Field(default_factory=dict)


class GpuRecipe(_Strict):
    """The GPU the GPU steps get, and the cost knobs: GPU type, spot/preemptible, max runtime."""

    steps: list[str] = Field(default_factory=lambda: list(GPU_STEPS))
    count: int = Field(default=1, ge=1)
    type: str = Field(
        description="kubernetes: the accelerator node label value (nvidia-l4); vertex: the accelerator "
        "(NVIDIA_L4); sagemaker: the instance type (ml.g5.2xlarge)"
    )
    type_label: str = Field(
        default="cloud.google.com/gke-accelerator",
        description="kubernetes: node label that carries the GPU type (EKS: k8s.amazonaws.com/accelerator)",
    )
    spot: bool = Field(default=False, description="spot / preemptible capacity: cheaper, can be reclaimed")
    spot_label: str = Field(
        default="cloud.google.com/gke-spot",
        description="kubernetes: node label set to 'true' on spot nodes (EKS: eks.amazonaws.com/capacityType)",
    )
    spot_label_value: str = "true"
    max_runtime_hours: float | None = Field(default=None, gt=0, description="stop a GPU step after this")
    cpu_count: float | None = Field(default=None, gt=0)
    memory: str | None = Field(default=None, pattern=r"^\d+(KB|KiB|MB|MiB|GB|GiB|TB|TiB|PB|PiB)$")
    machine_type: str | None = Field(default=None, description="vertex: machine type of a spot/timed job")
    tolerations: list[dict[str, Any]] = Field(default_factory=list)


class DockerRecipe(_Strict):
    """The image remote steps run in: a CUDA PyTorch parent matching the pinned torch, the
    project's own dependencies with `extras`, and a plain, secret-free environment."""

    parent_image: str
    extras: list[str] = Field(default_factory=lambda: ["gpu"])
    apt_packages: list[str] = Field(default_factory=list)
    environment: dict[str, str] = Field(default_factory=dict)


class StackRecipe(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str | None = None
    orchestrator: ComponentRecipe
    artifact_store: ComponentRecipe
    container_registry: ComponentRecipe | None = None
    image_builder: ComponentRecipe | None = None
    experiment_tracker: ComponentRecipe
    model_registry: ComponentRecipe
    step_operator: ComponentRecipe | None = None
    gpu: GpuRecipe | None = None
    docker: DockerRecipe
    secrets: list[str] = Field(
        default_factory=list,
        description="ZenML secrets whose keys become environment variables of every step (e.g. HF_TOKEN)",
    )
    source: str = Field(default="<recipe>", exclude=True)
    _lines: dict[tuple[str, ...], int] = PrivateAttr(default_factory=dict)

    def where(self, key: str) -> str:
        """`file:line key` for a dotted key of this recipe, for error messages."""
        parts = tuple(key.split("."))
        for cut in range(len(parts), 0, -1):
            if parts[:cut] in self._lines:
                return f"{self.source}:{self._lines[parts[:cut]]} {key}"
        return f"{self.source} {key}"

    @field_validator("secrets")
    @classmethod
    def _secret_names(cls, v: list[str]) -> list[str]:
        for name in v:
            if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
                raise ValueError(f"'{name}' is not a ZenML secret name; list secret names, never values")
        return v

    @model_validator(mode="after")
    def _components_fit(self) -> StackRecipe:
        remote = self.orchestrator.flavor not in LOCAL_ORCHESTRATORS
        if remote and self.artifact_store.flavor == "local":
            raise ValueError(
                "artifact_store.flavor: remote steps cannot read a local artifact store; use gcp/s3/azure"
            )
        if remote and self.container_registry is None:
            raise ValueError(
                "container_registry: a remote orchestrator pulls the steps' image from a registry; add one"
            )
        if self.gpu and self.step_operator is None and self.orchestrator.flavor not in GPU_ORCHESTRATORS:
            raise ValueError(
                f"gpu: the {self.orchestrator.flavor} orchestrator cannot give a step a GPU and there is no "
                f"step_operator; use a {'/'.join(GPU_ORCHESTRATORS)} orchestrator or add a GPU step operator"
            )
        if self.gpu and self.step_operator and self.step_operator.flavor not in GPU_STEP_OPERATORS:
            raise ValueError(
                f"step_operator.flavor: '{self.step_operator.flavor}' runs no GPU jobs; "
                f"use one of {', '.join(GPU_STEP_OPERATORS)}"
            )
        return self

    def components(self) -> dict[str, ComponentRecipe]:
        """Component type (ZenML's StackComponentType value) -> recipe, present ones only."""
        kinds = {
            "orchestrator": self.orchestrator,
            "artifact_store": self.artifact_store,
            "container_registry": self.container_registry,
            "image_builder": self.image_builder,
            "experiment_tracker": self.experiment_tracker,
            "model_registry": self.model_registry,
            "step_operator": self.step_operator,
        }
        return {k: v for k, v in kinds.items() if v is not None}

    def component_name(self, kind: str) -> str:
        comp = self.components()[kind]
        return comp.name or f"{self.name}-{kind.replace('_', '-')}"

    def placeholders(self) -> list[str]:
        """Dotted keys still holding a <PLACEHOLDER> the user must fill before a real run."""
        return [key for key, value in _walk(self.model_dump()) if PLACEHOLDER.search(str(value))]


def _walk(node: Any, path: tuple[str, ...] = ()) -> list[tuple[str, Any]]:
    if isinstance(node, dict):
        return [kv for k, v in node.items() for kv in _walk(v, (*path, str(k)))]
    if isinstance(node, list):
        return [kv for i, v in enumerate(node) for kv in _walk(v, (*path, str(i)))]
    return [(".".join(path), node)]


def secret_problems(data: dict[str, Any]) -> list[tuple[str, str]]:
    """(dotted key, message) for every literal credential: a value under a credential-named key
    that is not a `{{secret.key}}` reference, or any value shaped like a known token."""
    out = []
    for key, value in _walk(data):
        if value is None or value == "" or isinstance(value, bool):
            continue
        text = str(value)
        leaf = key.rsplit(".", 1)[-1]
        named = bool(SECRET_KEY.search(leaf)) and not leaf.endswith(("_token_file", "token_uri"))
        if SECRET_VALUE.search(text) or (named and not SECRET_REF.match(text.strip())):
            out.append(
                (
                    key,
                    "looks like a literal credential; store it in a ZenML secret "
                    "(`zenml secret create NAME --KEY=...`) and write `{{NAME.KEY}}` here, or list the "
                    "secret under `secrets:`",
                )
            )
    return out


def _docker_env_problems(data: dict[str, Any]) -> list[tuple[str, str]]:
    env = (data.get("docker") or {}).get("environment") or {}
    return [
        (
            f"docker.environment.{k}",
            "a secret in the image's environment is baked into every layer and log; list a ZenML secret "
            "holding it under `secrets:` instead",
        )
        for k in env
        if SECRET_KEY.search(str(k)) or re.search(r"TOKEN|PASSWORD|SECRET|API_KEY", str(k), re.I)
    ]


def load_recipe(path: str | Path) -> StackRecipe:
    """Load and validate a recipe; every problem at once, each with file:line and key."""
    from tuneline.config import _line_index

    p = Path(path)
    source = str(path)
    if not p.is_file():
        raise ConfigError(
            [Problem(source, "stack recipe not found; e.g. configs/stacks/kubernetes-gpu.yaml")]
        )
    text = p.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        raise ConfigError([Problem(where, f"not valid YAML: {getattr(e, 'problem', e)}")]) from e
    if not isinstance(data, dict):
        raise ConfigError(
            [Problem(source, "a recipe is a mapping: name:, orchestrator:, artifact_store:, ...")]
        )
    lines = _line_index(text)

    def where(key: str) -> str:
        parts = tuple(key.split("."))
        for cut in range(len(parts), 0, -1):
            if parts[:cut] in lines:
                return f"{source}:{lines[parts[:cut]]} {key}"
        return f"{source} {key}"

    problems = [Problem(where(k), m) for k, m in secret_problems(data) + _docker_env_problems(data)]
    try:
        recipe = StackRecipe.model_validate({**data, "source": source})
    except ValidationError as e:
        for err in e.errors():
            loc = ".".join(str(x) for x in err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            if not loc and ": " in msg and " " not in msg.split(": ", 1)[0]:
                loc, msg = msg.split(": ", 1)
            if err["type"] == "extra_forbidden":
                msg = f"unknown key '{err['loc'][-1]!s}'"
            elif err["type"] == "missing":
                msg = "required key is missing"
            problems.append(Problem(where(loc) if loc else source, msg))
        raise ConfigError(problems, source=source) from e
    if problems:
        raise ConfigError(problems, source=source)
    recipe._lines = lines
    return recipe


# --- schedules -----------------------------------------------------------------------------


def check_cron(cron: str) -> str:
    """A standard 5-field cron expression, or a UserError saying what is wrong."""
    cron = " ".join(cron.split())
    fields = cron.split(" ")
    if len(fields) != 5:
        raise UserError(
            f"--schedule '{cron}': a cron expression has 5 fields (minute hour day-of-month month "
            f"day-of-week), got {len(fields)}; e.g. '0 3 * * 1' is Mondays at 03:00"
        )
    try:
        from croniter import croniter

        ok = croniter.is_valid(cron)
    except ImportError:  # pragma: no cover - croniter comes with ZenML
        ok = all(re.fullmatch(r"[\d*/,\-A-Za-z?]+", f) for f in fields)
    if not ok:
        raise UserError(f"--schedule '{cron}': not a valid cron expression; e.g. '0 3 * * 1'")
    return cron


def check_timezone(tz: str | None) -> str | None:
    if tz is None:
        return None
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as e:
        raise UserError(f"--timezone '{tz}': unknown time zone; use an IANA name such as Europe/Paris") from e
    return tz


def crontab_line(cron: str, argv: list[str], timezone: str | None = None, cwd: Path | None = None) -> str:
    """A crontab entry that runs the same command from the project directory, absolute paths,
    without `--schedule` / `--timezone`, its output appended to a log under TUNELINE_HOME."""
    from tuneline.home import tuneline_home

    cwd = (cwd or Path.cwd()).resolve()
    args: list[str] = []
    skip = False
    for i, a in enumerate(argv):
        if skip:
            skip = False
            continue
        if a in ("--schedule", "--timezone"):
            skip = True
            continue
        if a.startswith(("--schedule=", "--timezone=")):
            continue
        prev = argv[i - 1] if i else ""
        # Paths the command reads are made absolute, so cron's working directory does not matter.
        if prev in ("--config", "--stack") and not Path(a).is_absolute():
            a = str((cwd / a).resolve())
        args.append(a)
    script = PROJECT_ROOT / "run.py"
    log = tuneline_home() / "logs" / "scheduled.log"
    command = " ".join(shlex.quote(x) for x in [sys.executable, str(script), *args])
    line = f"{cron} cd {shlex.quote(str(cwd))} && {command} >> {shlex.quote(str(log))} 2>&1"
    return f"CRON_TZ={timezone}\n{line}" if timezone else line


def check_schedule(orchestrator: str, cron: str, timezone: str | None, argv: list[str]) -> None:
    """Refuse a schedule the orchestrator cannot run, with what to do instead."""
    if orchestrator in LOCAL_ORCHESTRATORS:
        raise UserError(
            f"--schedule: the {orchestrator} orchestrator runs pipelines in this process and keeps no "
            f"schedule. Run on a remote stack (--stack configs/stacks/kubernetes-gpu.yaml), or let this "
            f"machine's cron start the run; add this to `crontab -e`:\n\n"
            f"{crontab_line(cron, argv, timezone)}\n"
        )
    if timezone and timezone not in ("UTC", "Etc/UTC"):
        raise UserError(
            f"--timezone {timezone}: ZenML 0.98 sends the {orchestrator} orchestrator a cron expression "
            f"in UTC and no time zone; write the schedule in UTC and drop --timezone"
        )


# --- settings per step ----------------------------------------------------------------------


def gpu_step_settings(recipe: StackRecipe) -> dict[str, Any]:
    """What a GPU step receives, as plain data: `settings` keyed the way ZenML keys them
    ('orchestrator', 'step_operator', 'resources') and the step operator's name, if any."""
    gpu = recipe.gpu
    if gpu is None:
        return {}
    runtime_s = int(gpu.max_runtime_hours * 3600) if gpu.max_runtime_hours else None
    resources = {
        k: v
        for k, v in {"gpu_count": gpu.count, "cpu_count": gpu.cpu_count, "memory": gpu.memory}.items()
        if v is not None
    }
    if recipe.step_operator is not None:
        return {
            "step_operator": recipe.component_name("step_operator"),
            "settings": {
                "resources": resources,
                "step_operator": _step_operator_settings(recipe.step_operator.flavor, gpu, runtime_s),
            },
        }
    flavor = recipe.orchestrator.flavor
    if flavor == "kubernetes":
        # The Kubernetes orchestrator ignores ResourceSettings: the GPU is a pod limit.
        pod: dict[str, Any] = {
            "resources": {
                "limits": {"nvidia.com/gpu": str(gpu.count)},
                "requests": {
                    k: v
                    for k, v in {
                        "cpu": f"{gpu.cpu_count:g}" if gpu.cpu_count else None,
                        "memory": _k8s_memory(gpu.memory),
                    }.items()
                    if v
                },
            },
            "node_selectors": {gpu.type_label: gpu.type},
            "tolerations": gpu.tolerations
            or [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        }
        if not pod["resources"]["requests"]:
            del pod["resources"]["requests"]
        if gpu.spot:
            pod["node_selectors"][gpu.spot_label] = gpu.spot_label_value
        orch: dict[str, Any] = {"pod_settings": pod}
        if runtime_s:
            orch["active_deadline_seconds"] = runtime_s
        return {"settings": {"orchestrator": orch}}
    if flavor == "vertex":
        # The accelerator as the GKE node label in pod_settings (node_selector_constraint is
        # deprecated in ZenML 0.98); the count comes from ResourceSettings.gpu_count.
        orch = {"pod_settings": {"node_selectors": {"cloud.google.com/gke-accelerator": gpu.type}}}
        if gpu.spot or runtime_s:
            # Spot capacity and a timeout exist only on Vertex custom jobs, which size the machine
            # from these parameters (ResourceSettings are then ignored).
            extra: dict[str, Any] = {}
            if gpu.spot:
                extra["strategy"] = "SPOT"
            if runtime_s:
                extra["timeout"] = f"{runtime_s}s"
            orch["custom_job_parameters"] = {
                "accelerator_type": gpu.type,
                "accelerator_count": gpu.count,
                "machine_type": gpu.machine_type or "g2-standard-8",
                "additional_training_job_args": extra,
            }
        return {"settings": {"resources": resources, "orchestrator": orch}}
    if flavor == "sagemaker":
        orch = {"instance_type": gpu.type}
        if runtime_s:
            orch["max_runtime_in_seconds"] = runtime_s
        if gpu.spot:
            orch["use_training_step"] = True
            orch["estimator_args"] = {
                "use_spot_instances": True,
                "max_wait": (runtime_s or 86400) * 2,
            }
        return {"settings": {"resources": resources, "orchestrator": orch}}
    return {"settings": {"resources": resources}}


def _step_operator_settings(flavor: str, gpu: GpuRecipe, runtime_s: int | None) -> dict[str, Any]:
    if flavor == "sagemaker":
        # instance_type in the settings is deprecated in ZenML 0.98; the Estimator takes it.
        est: dict[str, Any] = {"instance_type": gpu.type, "instance_count": 1}
        if runtime_s:
            est["max_run"] = runtime_s
        if gpu.spot:
            est["use_spot_instances"] = True
            est["max_wait"] = (runtime_s or 86400) * 2
        return {"estimator_args": est}
    if flavor == "vertex":
        extra: dict[str, Any] = {}
        if gpu.spot:
            extra["strategy"] = "SPOT"
        if runtime_s:
            extra["timeout"] = f"{runtime_s}s"
        return {
            "accelerator_type": gpu.type,
            "accelerator_count": gpu.count,
            "machine_type": gpu.machine_type or "g2-standard-8",
            "additional_training_job_args": extra,
        }
    if flavor == "kubernetes":
        pod = {
            "resources": {"limits": {"nvidia.com/gpu": str(gpu.count)}},
            "node_selectors": {gpu.type_label: gpu.type},
            "tolerations": gpu.tolerations
            or [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        }
        if gpu.spot:
            pod["node_selectors"][gpu.spot_label] = gpu.spot_label_value
        out: dict[str, Any] = {"pod_settings": pod}
        if runtime_s:
            out["active_deadline_seconds"] = runtime_s
        return out
    return {}


def _k8s_memory(memory: str | None) -> str | None:
    """'32GB' -> '32G', '16GiB' -> '16Gi': Kubernetes quantity suffixes."""
    if not memory:
        return None
    m = re.fullmatch(r"(\d+)(K|M|G|T|P)(i?)B", memory)
    return f"{m.group(1)}{m.group(2)}{m.group(3)}" if m else memory


# --- container -----------------------------------------------------------------------------

CONTAINER_HOME = "/app/.tuneline"


def pinned_torch(pyproject: Path = PROJECT_ROOT / "pyproject.toml") -> str:
    """The torch minor version the project pins, e.g. '2.13'."""
    deps = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["dependencies"]
    for dep in deps:
        m = re.match(r"torch\s*(?:>=|==|~=)\s*(\d+\.\d+)", dep)
        if m:
            return m.group(1)
    raise UserError(f"{pyproject}: no torch pin in [project].dependencies")


def project_requirements(extras: list[str], pyproject: Path = PROJECT_ROOT / "pyproject.toml") -> list[str]:
    """The project's dependencies plus the named extras, as pip requirement strings."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    reqs = list(project["dependencies"])
    optional = project.get("optional-dependencies", {})
    for extra in extras:
        if extra not in optional:
            raise UserError(
                f"docker.extras: '{extra}' is not an extra in {pyproject.name}: {sorted(optional)}"
            )
        reqs += optional[extra]
    return reqs


def docker_settings(recipe: StackRecipe) -> dict[str, Any]:
    """DockerSettings for remote steps, as plain data. No local state goes into the image
    (.dockerignore), and no secret into its environment: secrets arrive at run time."""
    torch = pinned_torch()
    if f":{torch}" not in recipe.docker.parent_image and f"torch{torch}" not in recipe.docker.parent_image:
        raise UserError(
            f"{recipe.source} docker.parent_image: '{recipe.docker.parent_image}' does not carry torch "
            f"{torch} (pinned in pyproject.toml); use e.g. pytorch/pytorch:{torch}.0-cuda12.8-cudnn9-runtime"
        )
    env = {
        "TUNELINE_HOME": CONTAINER_HOME,
        "ZENML_ANALYTICS_OPT_IN": "false",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "DO_NOT_TRACK": "1",
        "TOKENIZERS_PARALLELISM": "false",
        **recipe.docker.environment,
    }
    return {
        "parent_image": recipe.docker.parent_image,
        "requirements": project_requirements(recipe.docker.extras),
        "install_stack_requirements": True,
        "apt_packages": recipe.docker.apt_packages,
        "environment": env,
        "build_config": {"dockerignore": str(PROJECT_ROOT / ".dockerignore")},
    }
