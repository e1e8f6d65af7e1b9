"""The ZenML side of stack recipes: register a recipe's stack, compile or run a pipeline on it.

`tuneline/stacks.py` validates a recipe and says, as plain data, what each step receives; this
module turns that into ZenML components, settings, a `Schedule` and a compiled snapshot.

The dry run compiles with ZenML's own `Compiler` against an in-memory stack built from the
recipe: every component is the flavor's real implementation where its integration is
installed, and otherwise a compile-only stand-in carrying the flavor's own config and settings
classes (what the compiler reads), which refuses to submit anything. Nothing contacts a cloud.
"""

from __future__ import annotations

import json
import logging
import os
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any
from uuid import uuid4

from tuneline.errors import ConfigError, Problem, UserError
from tuneline.stacks import (
    LOCAL_ORCHESTRATORS,
    StackRecipe,
    check_cron,
    check_schedule,
    check_timezone,
    docker_settings,
    gpu_step_settings,
    load_recipe,
)

log = logging.getLogger("tuneline")

# The pyproject extra that installs each flavor's integration packages (one extra per cloud).
FLAVOR_EXTRA = {
    "kubernetes": "kubernetes",
    "kaniko": "kubernetes",
    "gcp": "gcp",
    "vertex": "gcp",
    "s3": "aws",
    "aws": "aws",
    "sagemaker": "aws",
}


def install_hint(flavors: list[str]) -> str:
    extras = sorted({FLAVOR_EXTRA.get(f, "kubernetes,gcp,aws") for f in flavors})
    return f"pip install -e '.[{','.join(extras)}]'"


# --- flavors and components -----------------------------------------------------------------


def _flavor(kind: str, name: str, recipe: StackRecipe) -> Any:
    """The ZenML Flavor object for (component type, flavor name), from ZenML's own registry."""
    from zenml.enums import StackComponentType
    from zenml.stack.flavor_registry import FlavorRegistry

    ctype = StackComponentType(kind)
    registry = FlavorRegistry()
    for cls in [*registry.builtin_flavors, *registry.integration_flavors]:
        flavor = cls()
        if flavor.type == ctype and flavor.name == name:
            return flavor
    known = sorted(
        {c().name for c in [*registry.builtin_flavors, *registry.integration_flavors] if c().type == ctype}
    )
    raise ConfigError(
        [
            Problem(
                f"{recipe.source} {kind}.flavor",
                f"unknown {kind} flavor '{name}'; ZenML has: {', '.join(known)}",
            )
        ]
    )


def _config(kind: str, flavor: Any, recipe: StackRecipe) -> Any:
    """The component's configuration, validated by the flavor's own config class."""
    from pydantic import ValidationError

    from tuneline.stacks import SECRET_REF

    comp = recipe.components()[kind]
    # `{{secret.key}}` references are resolved from the ZenML store when a validator reads them;
    # validating and compiling need the shape only, so they stand in as masked text here.
    conf = {
        k: f"<secret {v.strip()[2:-2].strip()}>" if isinstance(v, str) and SECRET_REF.match(v.strip()) else v
        for k, v in comp.config.items()
    }
    try:
        return flavor.config_class(**conf)
    except (ValidationError, ValueError) as e:
        errors = e.errors() if isinstance(e, ValidationError) else [{"loc": (), "msg": str(e)}]
        raise ConfigError(
            [
                Problem(
                    f"{recipe.source} {'.'.join([kind, 'config', *map(str, err['loc'])])}",
                    f"{err['msg']} (the {flavor.name} {kind} flavor's configuration)",
                )
                for err in errors
            ],
            source=recipe.source,
        ) from e


def _settings_class(config_class: type) -> type | None:
    """The flavor's settings class: the BaseSettings its config class mixes in (ZenML's pattern,
    e.g. KubernetesOrchestratorConfig(BaseOrchestratorConfig, KubernetesOrchestratorSettings))."""
    from zenml.config.base_settings import BaseSettings
    from zenml.stack.stack_component import StackComponentConfig

    for base in config_class.__mro__[1:]:
        if (
            isinstance(base, type)
            and issubclass(base, BaseSettings)
            and not issubclass(base, StackComponentConfig)
            and base is not BaseSettings
        ):
            return base
    return None


def _stand_in(flavor: Any) -> type:
    """A compile-only component class for a flavor whose integration is not installed."""
    from zenml.artifact_stores import BaseArtifactStore
    from zenml.container_registries import BaseContainerRegistry
    from zenml.enums import StackComponentType as T
    from zenml.experiment_trackers import BaseExperimentTracker
    from zenml.image_builders import BaseImageBuilder
    from zenml.model_registries import BaseModelRegistry
    from zenml.orchestrators import BaseOrchestrator
    from zenml.step_operators import BaseStepOperator

    bases = {
        T.ORCHESTRATOR: BaseOrchestrator,
        T.ARTIFACT_STORE: BaseArtifactStore,
        T.CONTAINER_REGISTRY: BaseContainerRegistry,
        T.IMAGE_BUILDER: BaseImageBuilder,
        T.EXPERIMENT_TRACKER: BaseExperimentTracker,
        T.MODEL_REGISTRY: BaseModelRegistry,
        T.STEP_OPERATOR: BaseStepOperator,
    }
    settings = _settings_class(flavor.config_class)

    def refuse(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise UserError(
            f"the {flavor.name} {flavor.type.value} integration is not installed "
            f"({install_hint([flavor.name])}); "
            f"this stand-in only compiles"
        )

    namespace: dict[str, Any] = {
        "settings_class": property(lambda self: settings),
        "submit_pipeline": refuse,
        "launch": refuse,
        "build": refuse,
        "get_orchestrator_run_id": lambda self: "dry-run",
    }
    cls = type(f"CompileOnly_{flavor.name}_{flavor.type.value}", (bases[flavor.type],), namespace)
    cls.__abstractmethods__ = frozenset()
    return cls


def _implementation(flavor: Any) -> tuple[type, bool]:
    """(class, installed): the real implementation, or a stand-in when its SDK is missing."""
    try:
        return flavor.implementation_class, True
    except ImportError:
        return _stand_in(flavor), False


def build_stack(recipe: StackRecipe) -> tuple[Any, dict[str, bool]]:
    """An in-memory ZenML Stack of the recipe's components (nothing stored, nothing contacted),
    and which components are the real implementation."""
    from zenml.enums import StackComponentType
    from zenml.stack import Stack

    now = datetime.now(UTC)
    components: dict[str, Any] = {}
    installed: dict[str, bool] = {}
    for kind, comp in recipe.components().items():
        flavor = _flavor(kind, comp.flavor, recipe)
        config = _config(kind, flavor, recipe)
        cls, real = _implementation(flavor)
        installed[kind] = real
        components[kind] = cls(
            name=recipe.component_name(kind),
            id=uuid4(),
            config=config,
            flavor=comp.flavor,
            type=StackComponentType(kind),
            user=None,
            created=now,
            updated=now,
        )
    return Stack(id=uuid4(), name=recipe.name, **components), installed


# --- registering ----------------------------------------------------------------------------


def register_recipe(recipe: StackRecipe, *, name: str | None = None, replace: bool = False) -> str:
    """Create the recipe's components and stack in the ZenML store; returns what was done.

    A stack or component of the same name is an error naming `--replace`; with it, the old stack
    and its recipe-named components are deleted first. Never prompts.
    """
    from zenml.client import Client
    from zenml.enums import StackComponentType
    from zenml.exceptions import IllegalOperationError

    if name:
        recipe = recipe.model_copy(update={"name": name})
    check_filled(recipe)
    for kind in recipe.components():  # the flavor's own config class validates each one first
        _config(kind, _flavor(kind, recipe.components()[kind].flavor, recipe), recipe)
    client = Client()
    _check_secrets_exist(client, recipe)
    clashes = []
    try:
        existing = client.get_stack(recipe.name, allow_name_prefix_match=False)
        clashes.append(f"stack '{existing.name}'")
    except KeyError:
        existing = None
    for kind in recipe.components():
        try:
            client.get_stack_component(
                StackComponentType(kind), recipe.component_name(kind), allow_name_prefix_match=False
            )
            clashes.append(f"{kind} '{recipe.component_name(kind)}'")
        except KeyError:
            pass
    if clashes and not replace:
        raise UserError(
            f"stack register: {', '.join(clashes)} already exist in the ZenML store; pass --replace to "
            f"recreate them from {recipe.source}, or --name NEW_NAME for a second stack"
        )
    if existing is not None:
        if client.active_stack_model.id == existing.id:
            raise UserError(
                f"stack register --replace: '{recipe.name}' is the active stack; activate another "
                f"(`zenml stack set default`) first"
            )
        client.delete_stack(existing.id)
    ids = {}
    for kind, comp in recipe.components().items():
        ctype = StackComponentType(kind)
        cname = recipe.component_name(kind)
        if replace:
            try:
                client.delete_stack_component(cname, ctype)
            except KeyError:
                pass
            except IllegalOperationError as e:  # another stack uses it
                raise UserError(f"stack register --replace: cannot replace {kind} '{cname}': {e}") from e
        ids[ctype] = client.create_stack_component(
            name=cname, flavor=comp.flavor, component_type=ctype, configuration=comp.config
        ).id
    stack = client.create_stack(name=recipe.name, components=ids, secrets=recipe.secrets or None)
    names = ", ".join(f"{k} {recipe.component_name(k)} ({c.flavor})" for k, c in recipe.components().items())
    return (
        f"registered ZenML stack '{stack.name}' from {recipe.source}: {names}\n"
        f"  run on it: python run.py --config configs/sft.yaml --stack {recipe.source}"
    )


def _check_secrets_exist(client: Any, recipe: StackRecipe) -> None:
    """Every secret the recipe names exists (with the key referenced) before anything is
    written, so a refused registration leaves the store as it was."""
    from tuneline.stacks import SECRET_REF

    wanted: dict[str, set[str]] = {name: set() for name in recipe.secrets}
    for comp in recipe.components().values():
        for value in comp.config.values():
            if isinstance(value, str) and SECRET_REF.match(value.strip()):
                name, key = value.strip()[2:-2].strip().rsplit(".", 1)
                wanted.setdefault(name, set()).add(key)
    missing = []
    for name, keys in wanted.items():
        try:
            have = set(client.get_secret(name, allow_partial_name_match=False).secret_values)
        except KeyError:
            have = None
        if have is None or not keys <= have:
            args = " ".join(f"--{k}=..." for k in sorted(keys)) or "--HF_TOKEN=..."
            missing.append(f"zenml secret create {name} {args}")
    if missing:
        raise UserError(
            f"stack register: {recipe.source} references ZenML secrets that do not exist yet; create them "
            f"first (nothing was registered):\n  " + "\n  ".join(missing)
        )


def register_command(path: str, *, name: str | None, replace: bool) -> str:
    from pipelines.stack import bootstrap_lock, configure_environment, ensure_stack, quiet_known_noise
    from tuneline.home import mlflow_tracking_uri

    recipe = load_recipe(path)
    configure_environment()
    quiet_known_noise()
    ensure_stack(mlflow_tracking_uri())  # the local store exists, and its default stack
    with bootstrap_lock():
        return register_recipe(recipe, name=name, replace=replace)


def check_filled(recipe: StackRecipe) -> None:
    """Refuse a recipe that still holds <PLACEHOLDER> values, naming each file:line."""
    left = recipe.placeholders()
    if left:
        raise ConfigError(
            [
                Problem(recipe.where(key), "fill in this placeholder (see the comments in the recipe)")
                for key in left
            ],
            source=recipe.source,
        )


def check_runnable(recipe: StackRecipe) -> None:
    """Before a real run: placeholders filled, and every flavor's integration installed."""
    check_filled(recipe)
    missing = _missing_integrations(recipe)
    if missing:
        flavors = [m.rsplit(" ", 1)[-1] for m in missing]
        raise UserError(
            f"--stack {recipe.source}: the ZenML integrations of {', '.join(missing)} are not installed; "
            f"install them with {install_hint(flavors)}"
        )


def _missing_integrations(recipe: StackRecipe) -> list[str]:
    out = []
    for kind, comp in recipe.components().items():
        _, real = _implementation(_flavor(kind, comp.flavor, recipe))
        if not real:
            out.append(f"{kind} {comp.flavor}")
    return out


# --- compiling and running ------------------------------------------------------------------


def _schedule(cron: str | None) -> Any:
    if not cron:
        return None
    from zenml.config.schedule import Schedule

    return Schedule(cron_expression=cron)


def _configured_pipeline(
    cfg: Any, fingerprints: dict[str, str], recipe: StackRecipe, cron: str | None, enable_cache: bool
) -> tuple[Any, dict[str, Any], str]:
    """The pipeline with every option a run on `recipe` sends: the tracker and its experiment,
    the GPU settings on the GPU steps only, the Docker settings, the schedule."""
    from zenml.config import DockerSettings

    from pipelines.runner import (
        PIPELINES,
        _step_options,
        load_pipeline,
        new_run_name,
        pipeline_for,
        pipeline_steps,
    )
    from pipelines.zenml_model import zenml_model
    from tuneline.config import PipelineConfig
    from tuneline.evaluate.standalone import RUN_TYPE_TAG

    pipe = pipeline_for(cfg, scheduled=bool(cron))
    inputs = {"config": PipelineConfig.of(cfg), "fingerprints": fingerprints}
    run_name = new_run_name(pipe.name)
    experiment = cfg.tracking.experiment_name or load_pipeline(PIPELINES[cfg.kind]).name
    step_objects = pipeline_steps(pipe, **inputs)
    steps = _step_options(
        cfg,
        recipe.component_name("experiment_tracker"),
        step_objects,
        experiment_name=experiment,
        run_tags={RUN_TYPE_TAG: "training"},
    )
    gpu = gpu_step_settings(recipe)
    if gpu:
        targets = [s for s in recipe.gpu.steps if s in step_objects]
        if not targets:
            raise ConfigError(
                [
                    Problem(
                        f"{recipe.source} gpu.steps",
                        f"none of {recipe.gpu.steps} is a step of {pipe.name}: {', '.join(step_objects)}",
                    )
                ]
            )
        for name in targets:
            opts = steps.setdefault(name, {})
            settings = opts.setdefault("settings", {})
            settings.pop("resources", None)  # the recipe's GPU replaces train.resources
            settings.update(gpu["settings"])
            if "step_operator" in gpu:
                opts["step_operator"] = gpu["step_operator"]
    _check_gpu_reaches_a_component(cfg, recipe, steps)
    configured = pipe.with_options(
        enable_cache=enable_cache,
        run_name=run_name,
        steps=steps,
        settings={"docker": DockerSettings(**docker_settings(recipe))},
        schedule=_schedule(cron),
        model=zenml_model(cfg, run_name),
    )
    return configured, inputs, run_name


def _check_gpu_reaches_a_component(cfg: Any, recipe: StackRecipe, steps: dict[str, Any]) -> None:
    """A project asking for a GPU (train.resources.gpu_count) on a stack with nothing that gives
    one would train on CPU for hours: refuse before anything is submitted."""
    res = cfg.train.resources
    if not res.gpu_count or recipe.gpu is not None:
        return
    if res.step_operator:
        return
    flavor = recipe.orchestrator.flavor
    if flavor in ("vertex", "sagemaker"):
        return
    why = (
        "the Kubernetes orchestrator ignores ResourceSettings (its pods get a GPU from pod_settings)"
        if flavor == "kubernetes"
        else f"the {flavor} orchestrator runs steps without a GPU"
    )
    raise ConfigError(
        [
            Problem(
                "train.resources.gpu_count",
                f"asks for {res.gpu_count} GPU but on stack '{recipe.name}' {why} and it has no GPU step "
                f"operator; add a `gpu:` section to {recipe.source}",
            )
        ]
    )


def compile_snapshot(
    cfg: Any, fingerprints: dict[str, str], recipe: StackRecipe, cron: str | None
) -> tuple[Any, Any, dict[str, bool]]:
    """ZenML's Compiler on the recipe's in-memory stack: (snapshot, schedule, installed)."""
    from zenml.config.compiler import Compiler
    from zenml.config.pipeline_run_configuration import PipelineRunConfiguration
    from zenml.integrations.registry import integration_registry

    configured, inputs, run_name = _configured_pipeline(cfg, fingerprints, recipe, cron, enable_cache=True)
    configured.prepare(**inputs)
    integration_registry.activate_integrations()
    stack, installed = build_stack(recipe)
    schedule = _schedule(cron)
    snapshot = Compiler().compile(
        pipeline=configured,
        stack=stack,
        # What `pipeline.with_options` keeps for the run (the per-step options), as `_compile` passes it.
        run_configuration=PipelineRunConfiguration(
            run_name=run_name, schedule=schedule, steps=configured._run_args.get("step_configurations")
        ),
    )
    return snapshot, schedule, installed


def _dump(settings: Any) -> Any:
    if hasattr(settings, "model_dump"):
        return settings.model_dump(mode="json", exclude_unset=True)
    return settings


def describe(
    snapshot: Any, schedule: Any, recipe: StackRecipe, installed: dict[str, bool], timezone: str | None
) -> dict[str, Any]:
    """What would be submitted, as one JSON-ready object."""
    steps = {}
    for name, step in snapshot.step_configurations.items():
        conf = step.config
        steps[name] = {
            "step_operator": conf.step_operator,
            "experiment_tracker": conf.experiment_tracker,
            "settings": {key: _dump(value) for key, value in sorted(conf.settings.items())},
        }
    pipeline_settings = snapshot.pipeline_configuration.settings
    return {
        "stack": recipe.name,
        "recipe": recipe.source,
        "pipeline": snapshot.pipeline_configuration.name,
        "run_name": snapshot.run_name_template,
        "components": {
            kind: {
                "name": recipe.component_name(kind),
                "flavor": comp.flavor,
                "integration_installed": installed[kind],
            }
            for kind, comp in recipe.components().items()
        },
        "schedule": None
        if schedule is None
        else {"cron_expression": schedule.cron_expression, "timezone": timezone or "UTC"},
        "secrets": recipe.secrets,
        "placeholders": recipe.placeholders(),
        "docker": _dump(pipeline_settings.get("docker")),
        "steps": steps,
    }


def format_description(d: dict[str, Any]) -> str:
    lines = [f"dry run: pipeline {d['pipeline']} on stack '{d['stack']}' ({d['recipe']}), nothing submitted"]
    for kind, c in d["components"].items():
        note = (
            ""
            if c["integration_installed"]
            else f"  (integration not installed: {install_hint([c['flavor']])})"
        )
        lines.append(f"  {kind:<19} {c['name']} ({c['flavor']}){note}")
    s = d["schedule"]
    lines.append(
        f"  schedule            {s['cron_expression']} ({s['timezone']})"
        if s
        else "  schedule            none (one run)"
    )
    lines.append(
        f"  secrets             {', '.join(d['secrets']) or 'none'} (ZenML secrets, resolved at run time)"
    )
    docker = d["docker"] or {}
    lines.append(
        f"  image               {docker.get('parent_image')} + {len(docker.get('requirements') or [])} requirements"
    )
    lines.append("  steps:")
    for name, step in d["steps"].items():
        where = f"step operator {step['step_operator']}" if step["step_operator"] else "orchestrator"
        gpu = _gpu_summary(step["settings"])
        lines.append(f"    {name:<22} {where}; {gpu}")
    if d["placeholders"]:
        lines.append(f"  to fill in before a real run: {', '.join(d['placeholders'])}")
    return "\n".join(lines)


def _gpu_summary(settings: dict[str, Any]) -> str:
    """One line per step: what GPU it asks for, and through which setting."""
    for key, value in settings.items():
        if key.startswith("step_operator") and isinstance(value, dict):
            instance = (value.get("estimator_args") or {}).get("instance_type") or value.get(
                "accelerator_type"
            )
            if instance:
                return f"GPU {instance} (step operator settings)"
    for key, value in settings.items():
        if not key.startswith("orchestrator") or not isinstance(value, dict):
            continue
        pod = value.get("pod_settings") or {}
        limit = (pod.get("resources") or {}).get("limits", {}).get("nvidia.com/gpu")
        if limit:
            return f"{limit} GPU (pod limit nvidia.com/gpu, nodes {pod.get('node_selectors')})"
        if value.get("instance_type") and (settings.get("resources") or {}).get("gpu_count"):
            return f"GPU instance {value['instance_type']} (orchestrator settings)"
    res = settings.get("resources") or {}
    if res.get("gpu_count"):
        return f"{res['gpu_count']} GPU (ResourceSettings)"
    return "CPU"


@contextmanager
def _active_stack(stack_id: str):
    """This process runs on the recipe's stack; the store's active stack stays as it was."""
    from zenml.constants import ENV_ZENML_ACTIVE_STACK_ID

    before = os.environ.get(ENV_ZENML_ACTIVE_STACK_ID)
    os.environ[ENV_ZENML_ACTIVE_STACK_ID] = stack_id
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(ENV_ZENML_ACTIVE_STACK_ID, None)
        else:
            os.environ[ENV_ZENML_ACTIVE_STACK_ID] = before


def _stack_for(recipe: StackRecipe) -> str:
    """The id of the recipe's stack in the store, registering it first if it is not there.

    A stack registered from an earlier version of the recipe is refused rather than used: the
    run would go to the old bucket, cluster or registry.
    """
    from zenml.client import Client

    client = Client()
    try:
        stack = client.get_stack(recipe.name, allow_name_prefix_match=False)
    except KeyError:
        log.info(register_recipe(recipe))
        return str(client.get_stack(recipe.name, allow_name_prefix_match=False).id)
    stored = {ctype.value: comps[0] for ctype, comps in stack.components.items() if comps}
    drift = []
    for kind, comp in recipe.components().items():
        have = stored.get(kind)
        if have is None or have.name != recipe.component_name(kind) or have.flavor_name != comp.flavor:
            drift.append(kind)
        elif any((have.configuration or {}).get(k) != v for k, v in comp.config.items()):
            drift.append(f"{kind}.config")
    drift += [kind for kind in stored if kind not in recipe.components()]
    if drift:
        raise UserError(
            f"--stack {recipe.source}: the ZenML stack '{recipe.name}' differs from the recipe "
            f"({', '.join(drift)}); run `python run.py stack register {recipe.source} --replace`"
        )
    return str(stack.id)


def cloud_command(
    cfg: Any,
    fingerprints: dict[str, str],
    *,
    stack: str | None,
    schedule: str | None,
    timezone: str | None,
    dry_run: bool,
    as_json: bool,
    enable_cache: bool,
    argv: list[str],
) -> str:
    """`run.py --config C [--stack RECIPE] [--schedule CRON [--timezone TZ]] [--dry-run [--json]]`."""
    from pipelines.stack import configure_environment, ensure_stack, quiet_known_noise
    from tuneline.home import mlflow_tracking_uri

    cron = check_cron(schedule) if schedule else None
    timezone = check_timezone(timezone)
    if timezone and not cron:
        raise UserError("--timezone applies to --schedule; add --schedule CRON")
    recipe = load_recipe(stack) if stack else None
    orchestrator = recipe.orchestrator.flavor if recipe else LOCAL_ORCHESTRATORS[0]
    if cron:
        check_schedule(orchestrator, cron, timezone, argv)
    assert recipe is not None  # a schedule without --stack stopped at check_schedule
    configure_environment()
    quiet_known_noise()
    if not dry_run:
        check_runnable(recipe)
    ensure_stack(mlflow_tracking_uri(cfg.tracking.mlflow_tracking_uri))
    if dry_run:
        snapshot, sched, installed = compile_snapshot(cfg, fingerprints, recipe, cron)
        d = describe(snapshot, sched, recipe, installed, timezone)
        return json.dumps(d, sort_keys=False) if as_json else format_description(d)
    with _active_stack(_stack_for(recipe)):
        configured, inputs, run_name = _configured_pipeline(cfg, fingerprints, recipe, cron, enable_cache)
        try:
            run = configured(**inputs)
        except KeyError as e:  # a ZenML secret the recipe lists is missing
            raise UserError(
                f"--stack {recipe.source}: {e}; create the secrets it lists ({', '.join(recipe.secrets)}) "
                f"with `zenml secret create NAME --KEY=VALUE`"
            ) from e
    if cron:
        return (
            f"scheduled {configured.name} on stack '{recipe.name}': cron '{cron}' (UTC)\n"
            f"  list or delete it: python run.py schedules [--delete NAME]"
        )
    status = getattr(getattr(run, "status", None), "value", "submitted")
    return f"run {run_name} on stack '{recipe.name}': {status}"
