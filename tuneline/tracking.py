"""MLflow helpers that do not depend on ZenML: params, secrets, registry promotion.

The registry logic lives here, not in a step, so it is testable against a real
SQLite or server-backed MLflow store without running a pipeline.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

SECRET_MARKERS = ("token", "password", "secret", "api_key", "apikey", "credential")


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = v
    return out


def safe_params(config: dict[str, Any]) -> dict[str, str]:
    """Flattened config for mlflow.log_params, with anything secret-looking removed."""
    params = {}
    for k, v in flatten(config).items():
        if any(m in k.lower() for m in SECRET_MARKERS):
            continue
        s = "" if v is None else str(v)
        params[k] = s[:500]  # MLflow caps param values; long inline records are not useful as params
    return params


def finite_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """Numeric metrics only. NaN/inf are kept: hiding them would hide a broken run."""
    out = {}
    for k, v in metrics.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        out[k] = float(v)
    return out


@dataclass
class PromotionDecision:
    promoted: bool
    reason: str
    candidate: float | None
    champion: float | None
    champion_version: str | None


def decide_promotion(
    candidate: float | None,
    champion: float | None,
    *,
    greater_is_better: bool,
    champion_version: str | None = None,
) -> PromotionDecision:
    """A candidate without a finite score never wins; no champion means it wins."""
    if candidate is None or not math.isfinite(candidate):
        return PromotionDecision(
            False, "candidate has no finite score", candidate, champion, champion_version
        )
    if champion is None or not math.isfinite(champion):
        return PromotionDecision(True, "no current champion", candidate, champion, champion_version)
    better = candidate > champion if greater_is_better else candidate < champion
    op = ">" if greater_is_better else "<"
    if better:
        return PromotionDecision(
            True, f"{candidate:.4f} {op} champion {champion:.4f}", candidate, champion, champion_version
        )
    return PromotionDecision(
        False, f"{candidate:.4f} not {op} champion {champion:.4f}", candidate, champion, champion_version
    )


def registration_refusal(
    reg: Any, tuned: dict[str, float], base: dict[str, float], *, evaluated: bool
) -> str | None:
    """Why this model must not be registered, or None. A model worse than its own base
    (by more than `min_improvement_over_base` allows) or with a non-finite score never is."""
    if not reg.enabled:
        return "registry.enabled is false"
    if not evaluated:
        return None
    score = tuned.get(reg.metric)
    if score is None:
        return f"registry.metric '{reg.metric}' was not reported by evaluation (got {sorted(tuned)})"
    if not math.isfinite(score):
        return f"{reg.metric} is not finite ({score})"
    if reg.metric in base and math.isfinite(base[reg.metric]):
        gain = (score - base[reg.metric]) * (1 if reg.greater_is_better else -1)
        if gain < reg.min_improvement_over_base:
            return (
                f"{reg.metric} {score:.4f} vs base {base[reg.metric]:.4f}: gain {gain:.4f} is below "
                f"registry.min_improvement_over_base={reg.min_improvement_over_base}"
            )
    return None


def register_version(
    client: Any,
    *,
    model_name: str,
    source: str,
    run_id: str,
    tags: dict[str, str],
    description: str | None = None,
) -> Any:
    """Create the registered model if needed, then one new version pointing at `source`."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(model_name)
    except MlflowException:
        client.create_registered_model(model_name, description="Fine-tuned with tuneline")
    return client.create_model_version(
        name=model_name,
        source=source,
        run_id=run_id,
        tags={k: str(v) for k, v in tags.items()},
        description=description,
    )


def champion_score(client: Any, model_name: str, alias: str, metric: str) -> tuple[float | None, str | None]:
    """The champion's score for `metric`, read from the tag the version was registered with."""
    from mlflow.exceptions import MlflowException

    try:
        mv = client.get_model_version_by_alias(model_name, alias)
    except MlflowException:
        return None, None
    raw = (mv.tags or {}).get(f"metric.{metric}")
    if raw is None and mv.run_id:
        run = client.get_run(mv.run_id)
        raw = run.data.metrics.get(f"finetuned_{metric}")
    return (float(raw) if raw is not None else None), mv.version


def parse_model_uri(uri: str) -> tuple[str, str | None, str | None]:
    """`models:/name@alias` or `models:/name/3` -> (name, alias, version)."""
    body = uri.removeprefix("models:/")
    if "@" in body:
        name, alias = body.rsplit("@", 1)
        return name, alias, None
    name, _, version = body.rpartition("/")
    if not name or not version.isdigit():
        raise ValueError(f"expected models:/<name>@<alias> or models:/<name>/<version>, got '{uri}'")
    return name, None, version


def pin_model_uri(client: Any, uri: str) -> str:
    """An alias moves; a version does not. Pinning makes caching, resume and lineage exact."""
    name, alias, version = parse_model_uri(uri)
    if alias is not None:
        version = client.get_model_version_by_alias(name, alias).version
    else:
        client.get_model_version(name, version)
    return f"models:/{name}/{version}"


def download_model_version(client: Any, uri: str, cache_root: str) -> str:
    """Download a pinned registry version once into cache_root; returns the local model dir."""
    import os
    import shutil
    import tempfile

    from mlflow.artifacts import download_artifacts

    name, _, version = parse_model_uri(pin_model_uri(client, uri))
    dest = os.path.join(cache_root, name.replace("/", "_"), str(version))
    if os.path.exists(os.path.join(dest, ".complete")):
        return dest
    mv = client.get_model_version(name, version)
    os.makedirs(cache_root, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=cache_root, prefix=".download-")
    try:
        local = download_artifacts(artifact_uri=mv.source, dst_path=tmp)
        open(os.path.join(local, ".complete"), "w").close()
        shutil.rmtree(dest, ignore_errors=True)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        os.replace(local, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def ensure_experiment(tracking_uri: str, name: str, artifact_root: str) -> None:
    """Create the experiment with its artifacts under `artifact_root` if it does not exist.

    A local MLflow store otherwise puts artifacts in ./mlruns of whatever directory the
    run started in. Servers keep their own artifact root, so they are left alone.
    """
    if tracking_uri.startswith(("http://", "https://", "databricks")):
        return
    from pathlib import Path

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    if client.get_experiment_by_name(name) is None:
        location = Path(artifact_root, name).resolve()
        location.mkdir(parents=True, exist_ok=True)
        client.create_experiment(name, artifact_location=location.as_uri())
