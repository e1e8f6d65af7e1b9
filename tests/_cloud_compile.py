"""Run in a subprocess by tests/test_cloud_stacks.py, in a fresh TUNELINE_HOME: compile the
shipped recipes with a schedule, register one (round trip), and submit the Kubernetes one
through ZenML's real orchestrator with only the Kubernetes API connection patched.

Prints one JSON object on the last line of stdout.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CRON = "0 3 * * 1"


def filled(recipe_path: Path, out: Path) -> Path:
    """The recipe with every <PLACEHOLDER> filled in, as a user would."""
    values = {
        "CLUSTER_CONTEXT": "gke_proj_europe-west4_ml",
        "BUCKET": "tuneline-test-bucket",
        "REGION": "europe-west4",
        "PROJECT_ID": "tuneline-test",
        "REPOSITORY": "tuneline",
        "MLFLOW_HOST": "mlflow.example.com",
    }
    text = re.sub(r"<([A-Z_]+)>", lambda m: values.get(m.group(1), m.group(0)), recipe_path.read_text())
    out.write_text(text)
    return out


def main(tmp: Path) -> dict:
    from pipelines.stack import configure_environment, ensure_stack

    configure_environment()
    from tuneline.home import mlflow_tracking_uri

    ensure_stack(mlflow_tracking_uri())

    from pipelines.cloud import compile_snapshot, describe, register_command
    from tuneline.cli import preflight
    from tuneline.config import load_config
    from tuneline.errors import UserError
    from tuneline.stacks import load_recipe

    cfg = load_config(ROOT / "configs" / "sft.yaml")
    fingerprints, _ = preflight(cfg)
    out: dict = {"compiled": {}}
    for name in ("kubernetes-gpu", "vertex-gpu", "sagemaker-gpu"):
        recipe = load_recipe(ROOT / "configs" / "stacks" / f"{name}.yaml")
        snapshot, schedule, installed = compile_snapshot(cfg, fingerprints, recipe, CRON)
        out["compiled"][name] = describe(snapshot, schedule, recipe, installed, None)

    # The command line: one JSON object for --json, a table without it.
    import contextlib
    import io

    import run

    config, recipe_path = str(ROOT / "configs" / "sft.yaml"), "configs/stacks/sagemaker-gpu.yaml"
    argv = ["--config", config, "--stack", recipe_path, "--schedule", CRON, "--dry-run"]
    for flag, key in ((["--json"], "cli_json"), ([], "cli_text")):
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            code = run.main([*argv, *flag])
        out[key] = {"code": code, "stdout": buf.getvalue()}

    # `stack register` round trip: the secrets the recipe references exist first, as documented.
    from zenml.client import Client

    client = Client()
    k8s_path = filled(ROOT / "configs" / "stacks" / "kubernetes-gpu.yaml", tmp / "k8s.yaml")
    try:
        register_command(str(k8s_path), name=None, replace=False)
    except UserError as e:
        out["no_secrets"] = str(e)
    out["stacks_before"] = sorted(s.name for s in client.list_stacks(size=100).items)
    client.create_secret("mlflow_credentials", values={"username": "u", "password": "p"})
    client.create_secret("huggingface", values={"HF_TOKEN": "test-value"})
    out["register"] = register_command(str(k8s_path), name=None, replace=False)
    try:
        register_command(str(k8s_path), name=None, replace=False)
        out["clash"] = None
    except UserError as e:
        out["clash"] = str(e)
    out["replace"] = register_command(str(k8s_path), name=None, replace=True)
    stored = client.get_stack("tuneline-k8s-gpu")
    out["stored_components"] = {
        str(t.value): [(c.name, c.flavor_name) for c in cs] for t, cs in stored.components.items()
    }
    out["stored_secrets"] = [str(s) for s in stored.secrets]
    out["active_stack"] = client.active_stack_model.name
    from pipelines.cloud import _stack_for

    out["same_stack"] = _stack_for(load_recipe(k8s_path)) == str(stored.id)
    moved = tmp / "k8s-moved.yaml"
    moved.write_text(k8s_path.read_text().replace("tuneline-test-bucket", "another-bucket"))
    try:
        _stack_for(load_recipe(moved))
        out["drift"] = None
    except UserError as e:
        out["drift"] = str(e)

    # Kubernetes: the orchestrator's own submit path on a stored snapshot of the compiled pipeline.
    out["cron_job"] = submit_kubernetes(client, load_recipe(k8s_path), cfg, fingerprints, compile_snapshot)
    return out


def submit_kubernetes(client, recipe, cfg, fingerprints, compile_snapshot) -> dict:
    import kubernetes.client as k8s
    from zenml.models import (
        BuildItem,
        PipelineBuildRequest,
        PipelineRequest,
        PipelineSnapshotRequest,
        ScheduleRequest,
    )

    from pipelines.cloud import build_stack

    snapshot, _, _ = compile_snapshot(cfg, fingerprints, recipe, CRON)
    store = client.zen_store
    project = client.active_project.id
    stack_id = client.get_stack(recipe.name).id
    orch_model = client.get_stack(recipe.name).components
    from zenml.enums import StackComponentType as T

    orch_id = orch_model[T.ORCHESTRATOR][0].id
    pipeline = store.create_pipeline(
        PipelineRequest(name=snapshot.pipeline_configuration.name, project=project)
    )
    build = store.create_build(
        PipelineBuildRequest(
            project=project,
            stack=stack_id,
            pipeline=pipeline.id,
            images={"orchestrator": BuildItem(image="europe-west4-docker.pkg.dev/p/r/tuneline:test")},
            is_local=False,
            contains_code=True,
        )
    )
    schedule = store.create_schedule(
        ScheduleRequest(
            name="weekly-sft",
            active=True,
            cron_expression=CRON,
            orchestrator_id=orch_id,
            pipeline_id=pipeline.id,
            project=project,
        )
    )
    stored = store.create_snapshot(
        PipelineSnapshotRequest(
            project=project,
            stack=stack_id,
            pipeline=pipeline.id,
            build=build.id,
            schedule=schedule.id,
            **snapshot.model_dump(),
        )
    )
    stack, _ = build_stack(recipe)
    orchestrator = stack.orchestrator
    calls: list[dict] = []

    def call_api(self, resource_path, method, *args, **kwargs):
        body = kwargs.get("body")
        calls.append(
            {
                "path": resource_path,
                "method": method,
                "body": k8s.ApiClient().sanitize_for_serialization(body),
            }
        )
        if kwargs.get("response_type") == "V1CronJob":
            return k8s.V1CronJob(metadata=k8s.V1ObjectMeta(name=body.metadata.name))
        return None

    # The connection points: reading kubeconfig, and the HTTP call every API method goes through.
    with (
        mock.patch("zenml.integrations.kubernetes.kube_utils.load_kube_config"),
        mock.patch.object(k8s.ApiClient, "call_api", call_api),
    ):
        result = orchestrator.submit_pipeline(
            snapshot=stored,
            stack=stack,
            base_environment={"ZENML_STORE_URL": "https://zenml.example.com"},
            step_environments={name: {} for name in stored.step_configurations},
            placeholder_run=None,
        )
    step_gpu = {}
    for name, step in stored.step_configurations.items():
        settings = orchestrator.get_settings(step)
        pod = settings.pod_settings
        step_gpu[name] = {
            "limits": (pod.resources.get("limits") if pod else None) or {},
            "node_selectors": pod.node_selectors if pod else {},
            "active_deadline_seconds": settings.active_deadline_seconds,
        }
    return {
        "calls": calls,
        "metadata": dict(result.metadata) if result and result.metadata else {},
        "step_gpu": step_gpu,
    }


if __name__ == "__main__":
    result = main(Path(sys.argv[1]))
    print(json.dumps(result))
