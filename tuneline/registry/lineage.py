"""Lineage of a registered version: enough to say exactly what produced it, and to redo it.

A version in the registry outlives the run, the branch and the machine that made it. Its tags
carry the code (git commit, dirty flag), the config (hash; the resolved config itself is
logged as a run artifact), the runs (ZenML, MLflow), the data (fingerprints, sources), the
starting model (name, revision), the libraries that shaped the numbers and the hardware and
time it took. Nothing secret goes in: config keys that name secrets are dropped and URIs
lose their credentials before anything is hashed or written.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from tuneline.home import PROJECT_ROOT, redact_uri
from tuneline.tracking import is_secret_key

PACKAGES = ("torch", "transformers", "peft", "trl", "accelerate", "datasets", "mlflow", "tuneline")
# MLflow caps nothing this small, but a tag is for reading: long values belong in artifacts.
MAX_TAG_CHARS = 4000
CONFIG_ARTIFACT = "tuneline_config.json"


def loggable_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The resolved config with secret-named keys removed and credentials cut out of URIs.

    This is what gets hashed and logged as the config artifact, so a rotated token neither
    changes the config hash nor reaches the tracking server.
    """

    def clean(value: Any, key: str) -> Any:
        if isinstance(value, Mapping):
            out = {}
            for k, v in value.items():
                path = f"{key}.{k}" if key else str(k)
                if not is_secret_key(path):
                    out[k] = clean(v, path)
            return out
        if isinstance(value, list | tuple):
            return [clean(v, key) for v in value]
        if isinstance(value, str) and "://" in value:
            return redact_uri(value)
        return value

    return clean(config, "")


def config_sha256(config: Mapping[str, Any]) -> str:
    """Hash of the loggable config, independent of key order."""
    canonical = json.dumps(loggable_config(config), sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def git_state(repo_dir: str | Path = PROJECT_ROOT) -> dict[str, str]:
    """`git.commit` and `git.dirty` of the code that ran; "unknown" outside a git checkout
    (an installed wheel, a container without .git) or without git on PATH."""
    unknown = {"git.commit": "unknown", "git.dirty": "unknown"}

    def git(*args: str) -> str | None:
        try:
            r = subprocess.run(
                ["git", *args], cwd=repo_dir, capture_output=True, text=True, timeout=20, check=False
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return r.stdout.strip() if r.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if not commit:
        return unknown
    # Untracked files do not change what ran unless imported; tracked edits do.
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"git.commit": commit, "git.dirty": "unknown" if status is None else str(bool(status)).lower()}


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def hardware_description() -> str:
    """`2x NVIDIA H100 80GB HBM3 (CUDA 12.8)` or `cpu x86_64, 16 cores`: what bounds speed and numerics."""
    cpu = f"cpu {platform.machine() or 'unknown'}, {os.cpu_count() or '?'} cores"
    try:
        import torch
    except ImportError:
        return cpu
    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        kinds = sorted(set(names))
        gpus = ", ".join(f"{names.count(k)}x {k}" for k in kinds)
        return f"{gpus} (CUDA {torch.version.cuda}); {cpu}"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return f"Apple MPS; {cpu}"
    return cpu


def lineage_tags(
    *,
    config: Mapping[str, Any],
    mlflow_run_id: str | None,
    zenml_run_id: str | None = None,
    zenml_run_name: str | None = None,
    data_fingerprints: Mapping[str, str] | None = None,
    data_sources: str | None = None,
    base_model: str | None = None,
    base_revision: str | None = None,
    method: str | None = None,
    wall_time_s: float | None = None,
    weights_sha256: str | None = None,
    repo_dir: str | Path = PROJECT_ROOT,
    packages: Mapping[str, str] | None = None,
    hardware: str | None = None,
) -> dict[str, str]:
    """Version tags that say what produced a model. Every value is a string; absent inputs are
    left out rather than written as "None". `packages`/`hardware` default to this process's."""
    tags: dict[str, str] = dict(git_state(repo_dir))
    tags["config.sha256"] = config_sha256(config)
    optional = {
        "mlflow_run_id": mlflow_run_id,  # not `mlflow.*`: MLflow tools hide those as system tags
        "zenml.run_id": zenml_run_id,
        "zenml.pipeline_run": zenml_run_name,
        "data.sources": data_sources,
        "base_model": base_model,
        "base_model.revision": base_revision or ("unpinned" if base_model else None),
        "method": method,
        "train.wall_time_s": None if wall_time_s is None else f"{wall_time_s:.1f}",
        "weights.sha256": weights_sha256,
        "hardware": hardware if hardware is not None else hardware_description(),
    }
    tags.update({k: str(v) for k, v in optional.items() if v is not None})
    for split, fp in sorted((data_fingerprints or {}).items()):
        tags[f"data.fingerprint.{split}"] = str(fp)
    for name, version in sorted((packages if packages is not None else package_versions()).items()):
        tags[f"pkg.{name}"] = str(version)
    return {k: (redact_uri(v) if "://" in v else v)[:MAX_TAG_CHARS] for k, v in tags.items()}
