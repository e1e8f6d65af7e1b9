"""MLflow helpers that do not depend on ZenML: params, secrets, whether a model may be registered,
and fetching registered versions. Registering, promotion and rollback live in `tuneline.registry`.
"""

from __future__ import annotations

import math
import re
from typing import Any

# Whole words of a key that mark it secret. Matching words, not substrings, keeps
# `tokenize.*`, `model.tokenizer` and `eval.max_new_tokens` in the logged params.
SECRET_WORDS = frozenset(
    {"password", "passwd", "pwd", "secret", "credential", "credentials", "apikey", "passphrase"}
)
# `key` is secret only after one of these (`api_key`, `private-key`), not alone (`registry.key`).
SECRET_KEY_QUALIFIERS = frozenset({"api", "access", "private", "secret", "signing", "auth"})
# A key ending in `token` holds one (`hf_token`, `auth.token`), unless it names a
# vocabulary token (`pad_token`, `eos_token`); `token_count` describes tokens.
VOCAB_TOKEN_ROLES = frozenset(
    {"pad", "eos", "bos", "unk", "sep", "cls", "mask", "stop", "start", "end", "special"}
)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = v
    return out


def is_secret_key(key: str) -> bool:
    """`hf_token`, `auth.token`, `x.access_token`, `apiKey`: each dotted segment is split into
    words on `_`, `-` and camelCase and matched word by word, so `tokenize.*` is never a secret."""
    for segment in key.split("."):
        words = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", segment).lower().replace("-", "_").split("_")
        if SECRET_WORDS.intersection(words):
            return True
        if words[-1] == "token" and (len(words) == 1 or words[-2] not in VOCAB_TOKEN_ROLES):
            return True
        if any(w == "key" and i and words[i - 1] in SECRET_KEY_QUALIFIERS for i, w in enumerate(words)):
            return True
    return False


def safe_params(config: dict[str, Any]) -> dict[str, str]:
    """Flattened config for mlflow.log_params, with every secret-named key removed."""
    params = {}
    for k, v in flatten(config).items():
        if is_secret_key(k):
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


def registration_refusal(
    reg: Any, tuned: dict[str, float], base: dict[str, float], *, evaluated: bool
) -> str | None:
    """Why this model must not be registered, or None. A model that was not evaluated, one
    worse than its own base (by more than `min_improvement_over_base` allows) or one with a
    non-finite score never is: the registry only holds versions with scores to compare."""
    if not reg.enabled:
        return "registry.enabled is false"
    if not evaluated:
        return (
            "the model was not evaluated (eval.enabled is false), so it has no score to register or "
            "promote on; set eval.enabled: true, or registry.enabled: false to skip registering"
        )
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
        return hf_model_dir(dest)
    mv = client.get_model_version(name, version)
    os.makedirs(cache_root, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=cache_root, prefix=".download-")
    try:
        # The client's store, not whichever one is global: a server's mlflow-artifacts:/ source
        # resolves against it (`run.py generate --config` sets no MLFLOW_TRACKING_URI).
        local = download_artifacts(artifact_uri=mv.source, dst_path=tmp, tracking_uri=client.tracking_uri)
        open(os.path.join(local, ".complete"), "w").close()
        shutil.rmtree(dest, ignore_errors=True)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        os.replace(local, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return hf_model_dir(dest)


# Where a registered version keeps its Hugging Face directory: the version's own root (plain
# artifact folder), or the `hf_model` artifact of the MLflow pyfunc model (`artifacts/hf_model`).
HF_MODEL_ARTIFACT = "hf_model"


def hf_model_dir(root: str) -> str:
    """The Hugging Face model/adapter directory inside a downloaded version (or `root` itself)."""
    import os

    def is_model_dir(d: str) -> bool:
        return any(os.path.isfile(os.path.join(d, f)) for f in ("config.json", "adapter_config.json"))

    if is_model_dir(root):
        return root
    for candidate in (
        os.path.join(root, "artifacts", HF_MODEL_ARTIFACT),
        os.path.join(root, HF_MODEL_ARTIFACT),
    ):
        if is_model_dir(candidate):
            return candidate
    raise ValueError(f"{root} holds no model: neither config.json nor adapter_config.json was found")


def resolve_model_ref(ref: str, *, tracking_uri: str, cache_root: str) -> tuple[str, str]:
    """A model reference as users write it -> (local Hugging Face directory, pinned reference).

    `models:/NAME@alias` and `models:/NAME/VERSION` come from the registry at `tracking_uri`
    (the alias is pinned to the version it points at now); anything else is a local directory.
    Raises UserError naming the reference and what to do.
    """
    import os

    from tuneline.errors import UserError

    if ref.startswith("models:/"):
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        from tuneline.home import redact_uri

        client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        try:
            pinned = pin_model_uri(client, ref)
            return download_model_version(client, pinned, cache_root), pinned
        except (MlflowException, ValueError) as e:
            raise UserError(
                f"--model {ref}: {str(e).splitlines()[0]} (registry {redact_uri(tracking_uri)}; "
                "`python run.py models NAME` lists what exists)"
            ) from e
    path = os.path.abspath(os.path.expanduser(ref))
    if not os.path.isdir(path):
        raise UserError(
            f"--model {ref}: no such directory; give a model directory or models:/NAME@alias or models:/NAME/VERSION"
        )
    try:
        return hf_model_dir(path), path
    except ValueError as e:
        raise UserError(f"--model {ref}: {e}") from e


EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


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
        # The MLflow 3 UI shows a model-training experiment as runs with metric charts (it would
        # otherwise guess, and may settle on its GenAI layout of traces and evaluations).
        client.create_experiment(
            name, artifact_location=location.as_uri(), tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}
        )
