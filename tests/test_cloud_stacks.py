"""Stack recipes, container settings, schedules and the compiled dry run, offline.

The recipes are compiled by ZenML's own Compiler on in-memory stacks, registered on a temporary
ZenML store, and the Kubernetes one is submitted through ZenML's Kubernetes orchestrator with
only the Kubernetes API connection patched (tests/_cloud_compile.py, in a subprocess with its
own TUNELINE_HOME). No cloud is contacted.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tuneline.errors import ConfigError, UserError
from tuneline.stacks import (
    SECRET_KEY,
    SECRET_VALUE,
    check_cron,
    check_schedule,
    crontab_line,
    docker_settings,
    gpu_step_settings,
    load_recipe,
    pinned_torch,
)

ROOT = Path(__file__).resolve().parent.parent
RECIPES = sorted((ROOT / "configs" / "stacks").glob("*.yaml"))
GPU = ("train_model", "evaluate_model")
CRON = "0 3 * * 1"


def test_the_three_recipes_ship():
    assert {p.name for p in RECIPES} >= {"kubernetes-gpu.yaml", "vertex-gpu.yaml", "sagemaker-gpu.yaml"}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_loads_and_names_every_component(path):
    recipe = load_recipe(path)
    kinds = set(recipe.components())
    assert kinds >= {
        "orchestrator",
        "artifact_store",
        "container_registry",
        "image_builder",
        "experiment_tracker",
        "model_registry",
    }
    assert recipe.artifact_store.config["path"].startswith(("gs://", "s3://"))
    assert recipe.experiment_tracker.flavor == recipe.model_registry.flavor == "mlflow"
    assert recipe.gpu is not None and recipe.gpu.type and recipe.gpu.spot is not None
    assert recipe.gpu.max_runtime_hours
    # Placeholders are obvious, and the credentials are ZenML secret references.
    assert recipe.placeholders()
    assert recipe.experiment_tracker.config["tracking_password"].startswith("{{")
    assert recipe.secrets == ["huggingface"]


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "recipe.yaml"
    p.write_text(text)
    return p


def test_a_literal_secret_is_refused_with_file_line(tmp_path):
    text = (ROOT / "configs" / "stacks" / "kubernetes-gpu.yaml").read_text()
    text = text.replace('"{{mlflow_credentials.password}}"', "hunter2-not-a-reference")
    text = text.replace(
        "  extras: [gpu]", "  extras: [gpu]\n  environment:\n    HF_TOKEN: hf_abcdefghijklmnopqrstuvwx"
    )
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_recipe(path)
    msg = str(e.value)
    line = next(i for i, s in enumerate(text.splitlines(), 1) if "hunter2" in s)
    assert f"{path}:{line} experiment_tracker.config.tracking_password" in msg
    assert "docker.environment.HF_TOKEN" in msg and "ZenML secret" in msg
    assert "hunter2" not in msg and "hf_abc" not in msg  # the error never echoes the value


def test_a_token_shaped_value_is_refused_anywhere(tmp_path):
    text = (ROOT / "configs" / "stacks" / "sagemaker-gpu.yaml").read_text()
    text = text.replace("region: <REGION>", "region: AKIAABCDEFGHIJKLMNOP")
    with pytest.raises(ConfigError, match=r"orchestrator\.config\.region: looks like a literal credential"):
        load_recipe(_write(tmp_path, text))


def test_unknown_key_and_missing_gpu_component(tmp_path):
    text = (
        (ROOT / "configs" / "stacks" / "vertex-gpu.yaml").read_text().replace("  spot: true", "  spto: true")
    )
    with pytest.raises(ConfigError, match=r"recipe.yaml:\d+ gpu.spto: unknown key 'spto'"):
        load_recipe(_write(tmp_path, text))
    local = (
        "name: t\norchestrator: {flavor: local}\nartifact_store: {flavor: local}\n"
        "experiment_tracker: {flavor: mlflow}\nmodel_registry: {flavor: mlflow}\n"
        "gpu: {type: nvidia-l4}\ndocker: {parent_image: pytorch/pytorch:2.13.0-cuda12.8-cudnn9-runtime}\n"
    )
    with pytest.raises(ConfigError, match="local orchestrator cannot give a step a GPU"):
        load_recipe(_write(tmp_path, local))


def test_gpu_settings_per_orchestrator():
    k8s = gpu_step_settings(load_recipe(ROOT / "configs" / "stacks" / "kubernetes-gpu.yaml"))
    # Kubernetes ignores ResourceSettings: the GPU must be a pod limit, with node selectors.
    assert "resources" not in k8s["settings"] and "step_operator" not in k8s
    pod = k8s["settings"]["orchestrator"]["pod_settings"]
    assert pod["resources"]["limits"] == {"nvidia.com/gpu": "1"}
    assert pod["node_selectors"]["cloud.google.com/gke-spot"] == "true"
    assert k8s["settings"]["orchestrator"]["active_deadline_seconds"] == 6 * 3600
    vertex = gpu_step_settings(load_recipe(ROOT / "configs" / "stacks" / "vertex-gpu.yaml"))
    assert vertex["settings"]["resources"]["gpu_count"] == 1
    assert vertex["settings"]["orchestrator"]["custom_job_parameters"]["additional_training_job_args"] == {
        "strategy": "SPOT",
        "timeout": "21600s",
    }
    sm = gpu_step_settings(load_recipe(ROOT / "configs" / "stacks" / "sagemaker-gpu.yaml"))
    assert sm["step_operator"] == "tuneline-sagemaker-gpu-step-operator"
    est = sm["settings"]["step_operator"]["estimator_args"]
    assert est["instance_type"] == "ml.g5.2xlarge" and est["use_spot_instances"] is True
    assert est["max_wait"] >= est["max_run"] == 6 * 3600


def test_docker_settings_match_the_project_and_carry_no_secret():
    recipe = load_recipe(ROOT / "configs" / "stacks" / "kubernetes-gpu.yaml")
    d = docker_settings(recipe)
    torch = pinned_torch()
    assert torch == "2.13"
    assert f":{torch}." in d["parent_image"] and "cuda" in d["parent_image"]
    assert any(r.startswith("torch>=2.13") for r in d["requirements"])
    assert any(r.startswith("bitsandbytes") for r in d["requirements"])  # the gpu extra
    assert (
        d["environment"]["TUNELINE_HOME"].startswith("/")
        and d["environment"]["ZENML_ANALYTICS_OPT_IN"] == "false"
    )
    assert not [k for k in d["environment"] if SECRET_KEY.search(k) or "TOKEN" in k.replace("TOKENIZERS", "")]
    assert not [v for v in d["environment"].values() if SECRET_VALUE.search(v)]
    blob = json.dumps(d)
    for word in ("{{", "mlflow_credentials", "huggingface", "password"):
        assert word not in blob
    bad = recipe.model_copy(
        update={
            "docker": recipe.docker.model_copy(
                update={"parent_image": "pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime"}
            )
        }
    )
    with pytest.raises(UserError, match=r"does not carry torch 2\.13"):
        docker_settings(bad)


def test_dockerignore_keeps_local_state_out_of_the_image(tmp_path):
    """ZenML's own build context, with the project's .dockerignore, on a tree with local state."""
    from zenml.image_builders.build_context import BuildContext

    files = [
        "run.py",
        "tuneline/stacks.py",
        "configs/sft.yaml",
        ".tuneline/mlflow.db",
        ".tuneline/zenml/config.yaml",
        ".venv/bin/python",
        "mlruns/0/meta.yaml",
        "store.db",
        "data/cache.sqlite",
        ".env",
        ".env.local",
        "secrets/hf.txt",
        "tuneline/__pycache__/x.pyc",
        ".pytest_cache/v/x",
        ".git/config",
    ]
    for f in files:
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f).write_text("x")
    context = BuildContext(root=str(tmp_path), dockerignore_file=str(ROOT / ".dockerignore"))
    kept = {k for k in context.get_files() if (tmp_path / k).is_file()}
    assert {"run.py", "tuneline/stacks.py", "configs/sft.yaml"} <= kept
    leaked = sorted(k for k in kept if k not in {"run.py", "tuneline/stacks.py", "configs/sft.yaml"})
    assert leaked == []


def test_cron_and_schedule_rules(tmp_path, monkeypatch):
    assert check_cron("0  3 * * 1") == CRON
    for bad, why in (
        ("0 3 * *", "5 fields"),
        ("61 3 * * 1", "not a valid cron"),
        ("0 3 * * funday", "not a valid"),
    ):
        with pytest.raises(UserError, match=why):
            check_cron(bad)
    with pytest.raises(
        UserError, match=r"ZenML 0\.98 sends the kubernetes orchestrator a cron expression in UTC"
    ):
        check_schedule("kubernetes", CRON, "Europe/Paris", [])
    check_schedule("vertex", CRON, None, [])  # fine
    monkeypatch.setenv("TUNELINE_HOME", str(tmp_path / "home"))
    line = crontab_line(
        CRON, ["--config", "configs/sft.yaml", "--schedule", CRON, "--no-cache"], "Europe/Paris", ROOT
    )
    tz, entry = line.splitlines()
    assert tz == "CRON_TZ=Europe/Paris"
    assert entry.startswith(
        f"{CRON} cd {ROOT} && {sys.executable} {ROOT / 'run.py'} --config {ROOT / 'configs' / 'sft.yaml'} --no-cache"
    )
    assert "--schedule" not in entry


def _main(argv: list[str], capsys) -> tuple[int, str]:
    sys.path.insert(0, str(ROOT))
    import run

    code = run.main(argv)
    out = capsys.readouterr()
    return code, out.out + out.err


def test_cli_invalid_combinations_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TUNELINE_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(ROOT)
    code, out = _main(
        ["--config", "configs/sft.yaml", "--schedule", "0 3 * * 1", "--timezone", "Europe/Paris"], capsys
    )
    assert code == 2
    assert "the local orchestrator runs pipelines in this process" in out
    assert "CRON_TZ=Europe/Paris" in out and f"--config {ROOT / 'configs' / 'sft.yaml'}" in out
    code, out = _main(
        [
            "--config",
            "configs/sft.yaml",
            "--stack",
            "configs/stacks/vertex-gpu.yaml",
            "--schedule",
            "0 25 * * *",
        ],
        capsys,
    )
    assert code == 2 and "not a valid cron expression" in out
    code, out = _main(
        ["--config", "configs/sft.yaml", "--stack", "configs/stacks/nope.yaml", "--dry-run"], capsys
    )
    assert code == 2 and "stack recipe not found" in out
    assert not (tmp_path / "home").exists()  # refused before any state was created


def test_gpu_asked_by_the_project_needs_a_gpu_component():
    from pipelines.cloud import _check_gpu_reaches_a_component
    from tuneline.config import load_config

    cfg = load_config(ROOT / "configs" / "sft.yaml", ["train.resources.gpu_count=1"])
    recipe = load_recipe(ROOT / "configs" / "stacks" / "kubernetes-gpu.yaml")
    no_gpu = recipe.model_copy(update={"gpu": None})
    with pytest.raises(
        ConfigError, match=r"train\.resources\.gpu_count: asks for 1 GPU .* ignores ResourceSettings"
    ):
        _check_gpu_reaches_a_component(cfg, no_gpu, {})
    _check_gpu_reaches_a_component(cfg, recipe, {})  # the recipe's gpu section provides it


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("cloud")
    env = {**os.environ, "TUNELINE_HOME": str(tmp / "home")}
    for key in ("MLFLOW_TRACKING_URI", "ZENML_CONFIG_PATH", "ZENML_STORE_URL", "ZENML_ACTIVE_STACK_ID"):
        env.pop(key, None)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "_cloud_compile.py"), str(tmp)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", ["kubernetes-gpu", "vertex-gpu", "sagemaker-gpu"])
def test_compiled_recipe(compiled, name):
    d = compiled["compiled"][name]
    assert d["schedule"] == {"cron_expression": CRON, "timezone": "UTC"}
    steps = d["steps"]
    assert set(GPU) <= set(steps) and {"load_dataset", "tokenize_dataset", "register_model"} <= set(steps)
    operator = "tuneline-sagemaker-gpu-step-operator" if name == "sagemaker-gpu" else None
    for step, s in steps.items():
        gpu_step = step in GPU
        settings = s["settings"]
        # Docker settings reach every step; the same image, no secret.
        assert settings["docker"]["parent_image"].startswith("pytorch/pytorch:2.13.0-cuda")
        assert (
            "{{" not in json.dumps(settings["docker"]) and "HF_TOKEN" not in settings["docker"]["environment"]
        )
        assert s["step_operator"] == (operator if gpu_step else None)
        orch = next((v for k, v in settings.items() if k.startswith("orchestrator")), {})
        if name == "kubernetes-gpu":
            limits = ((orch.get("pod_settings") or {}).get("resources") or {}).get("limits", {})
            assert (limits.get("nvidia.com/gpu") == "1") is gpu_step, step
            assert "resources" not in settings
        elif name == "vertex-gpu":
            assert (settings.get("resources", {}).get("gpu_count") == 1) is gpu_step, step
            selectors = (orch.get("pod_settings") or {}).get("node_selectors", {})
            assert (selectors.get("cloud.google.com/gke-accelerator") == "NVIDIA_L4") is gpu_step
        else:
            op = next((v for k, v in settings.items() if k.startswith("step_operator")), {})
            assert (op.get("estimator_args", {}).get("instance_type") == "ml.g5.2xlarge") is gpu_step
    assert d["secrets"] == ["huggingface"]


def test_register_round_trip(compiled):
    # Referenced secrets are checked before anything is written.
    assert "zenml secret create mlflow_credentials --password=... --username=..." in compiled["no_secrets"]
    assert "zenml secret create huggingface" in compiled["no_secrets"]
    assert "tuneline-k8s-gpu" not in compiled["stacks_before"]
    assert "registered ZenML stack 'tuneline-k8s-gpu'" in compiled["register"]
    assert "already exist" in compiled["clash"] and "--replace" in compiled["clash"]
    assert "registered ZenML stack" in compiled["replace"]
    stored = compiled["stored_components"]
    assert stored["orchestrator"] == [["tuneline-k8s-gpu-orchestrator", "kubernetes"]]
    assert stored["image_builder"] == [["tuneline-k8s-gpu-image-builder", "kaniko"]]
    assert len(compiled["stored_secrets"]) == 1
    assert compiled["active_stack"] == "tuneline"  # registering never switches the user's stack
    # A run with the recipe uses the registered stack; an edited recipe is not run on the old one.
    assert compiled["same_stack"] is True
    assert "differs from the recipe (artifact_store.config)" in compiled["drift"]
    assert "stack register" in compiled["drift"] and "--replace" in compiled["drift"]


def test_kubernetes_submit_creates_the_cron_job(compiled):
    cj = compiled["cron_job"]
    posts = [c for c in cj["calls"] if c["path"].endswith("/cronjobs")]
    assert len(posts) == 1 and posts[0]["method"] == "POST"
    manifest = posts[0]["body"]
    assert manifest["kind"] == "CronJob" and manifest["spec"]["schedule"] == CRON
    assert cj["metadata"]["cron_job_name"] == manifest["metadata"]["name"]
    pod = manifest["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["containers"][0]["image"] == "europe-west4-docker.pkg.dev/p/r/tuneline:test"
    # The CronJob's pod orchestrates on CPU; the GPU goes to the train and evaluate step pods only.
    assert "nvidia.com/gpu" not in json.dumps(pod)
    assert "test-value" not in json.dumps(cj["calls"])  # the HF token secret value is not in the manifest
    for step, gpu in cj["step_gpu"].items():
        assert (gpu["limits"].get("nvidia.com/gpu") == "1") is (step in GPU), step
        assert (gpu["node_selectors"].get("cloud.google.com/gke-accelerator") == "nvidia-l4") is (step in GPU)


def test_a_real_run_needs_filled_placeholders_and_the_integrations(tmp_path):
    from pipelines.cloud import check_runnable

    shipped = ROOT / "configs" / "stacks" / "kubernetes-gpu.yaml"
    line = next(i for i, s in enumerate(shipped.read_text().splitlines(), 1) if "path: gs://<BUCKET>" in s)
    with pytest.raises(ConfigError, match=rf"kubernetes-gpu.yaml:{line} artifact_store.config.path: fill in"):
        check_runnable(load_recipe(shipped))
    filled = tmp_path / "k8s.yaml"
    filled.write_text(re.sub(r"<[A-Z_]+>", "x", shipped.read_text()).replace("Fill every x", "Filled"))
    with pytest.raises(
        UserError, match=r"artifact_store gcp are not installed; install them with pip install"
    ):
        check_runnable(load_recipe(filled))


def test_dry_run_command_line(compiled):
    as_json = compiled["cli_json"]
    assert as_json["code"] == 0
    lines = [ln for ln in as_json["stdout"].splitlines() if ln.strip()]
    assert len(lines) == 1  # one JSON object, nothing else on stdout
    d = json.loads(lines[0])
    assert d["schedule"]["cron_expression"] == CRON and d["stack"] == "tuneline-sagemaker-gpu"
    assert d["steps"]["train_model"]["step_operator"] == "tuneline-sagemaker-gpu-step-operator"
    text = compiled["cli_text"]
    assert text["code"] == 0
    rows = {ln.split()[0]: ln for ln in text["stdout"].splitlines() if ln.startswith("    ")}
    assert "GPU ml.g5.2xlarge (step operator settings)" in rows["train_model"]
    assert rows["load_dataset"].rstrip().endswith("orchestrator; CPU")
    assert "nothing submitted" in text["stdout"] and "0 3 * * 1 (UTC)" in text["stdout"]
