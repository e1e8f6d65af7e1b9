"""First-run bootstrap of the local ZenML stack, reused (and kept in sync) afterwards.

Everything lives under TUNELINE_HOME so one folder holds all local state. Runs only
when called (from run.py), never at import time.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from tuneline.errors import ConfigError, Problem
from tuneline.home import artifact_store_dir, redact_uri, zenml_config_dir

log = logging.getLogger("tuneline")

STACK = "tuneline"
ORCHESTRATOR = "tuneline-local"
ARTIFACT_STORE = "tuneline-artifacts"
TRACKER = "tuneline-mlflow"
REGISTRY = "tuneline-mlflow-registry"
CREDENTIALS_SECRET = "tuneline-mlflow-credentials"


def configure_environment() -> None:
    """Point ZenML at TUNELINE_HOME before it is imported, and keep it quiet and offline."""
    os.environ.setdefault("ZENML_CONFIG_PATH", str(zenml_config_dir()))
    os.environ.setdefault("ZENML_ANALYTICS_OPT_IN", "false")
    os.environ.setdefault("ZENML_ENABLE_REPO_INIT_WARNINGS", "false")
    os.environ.setdefault("ZENML_LOGGING_VERBOSITY", "WARN")
    os.environ.setdefault("ZENML_DISABLE_STEP_LOGS_STORAGE", "false")
    os.environ.setdefault("AUTO_OPEN_DASHBOARD", "false")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # MLflow 3 logs a hint for every run without a registered LoggedModel; not useful here.
    os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")


class _DropNoise(logging.Filter):
    """ZenML warns on every step that it cannot disable autologging for absent frameworks."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Failed to disable MLflow autologging" not in record.getMessage()


def quiet_known_noise() -> None:
    for name in ("zenml.integrations.mlflow.experiment_trackers.mlflow_experiment_tracker",):
        logging.getLogger(name).addFilter(_DropNoise())


def _tracker_config(tracking_uri: str) -> dict[str, Any]:
    """Remote MLflow servers need credentials in ZenML; they go to a ZenML secret, not the config."""
    from urllib.parse import unquote, urlsplit, urlunsplit

    parts = urlsplit(tracking_uri)
    conf: dict[str, Any] = {"tracking_uri": tracking_uri}
    if not tracking_uri.startswith(("http://", "https://")):
        if parts.password:
            raise ConfigError(
                [
                    Problem(
                        "tracking.mlflow_tracking_uri",
                        "put database credentials in the environment (e.g. ~/.pgpass), not in the URI",
                    )
                ]
            )
        return conf
    # user:password@ in an http URI moves into the secret; the component keeps a clean URI.
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    conf["tracking_uri"] = urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    from zenml.client import Client

    client = Client()
    user = unquote(parts.username) if parts.username else os.environ.get("MLFLOW_TRACKING_USERNAME")
    pwd = unquote(parts.password) if parts.password else os.environ.get("MLFLOW_TRACKING_PASSWORD")
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    values = {"username": user, "password": pwd} if user and pwd else {"token": token or "unused"}
    try:
        client.get_secret(CREDENTIALS_SECRET)
        client.update_secret(CREDENTIALS_SECRET, add_or_update_values=values)
    except KeyError:
        client.create_secret(CREDENTIALS_SECRET, values=values)
    if "username" in values:
        conf["tracking_username"] = f"{{{{{CREDENTIALS_SECRET}.username}}}}"
        conf["tracking_password"] = f"{{{{{CREDENTIALS_SECRET}.password}}}}"
    else:
        # ZenML insists on one auth method for http servers; an auth-less server ignores the token.
        conf["tracking_token"] = f"{{{{{CREDENTIALS_SECRET}.token}}}}"
    return conf


def ensure_stack(tracking_uri: str) -> str:
    """Create the tuneline stack on first use; later runs reuse it and sync the tracking URI.

    A user who activated another stack of their own (with an MLflow tracker) keeps it.
    Returns the name of the active stack.
    """
    from zenml.client import Client
    from zenml.enums import StackComponentType as T

    client = Client()
    active = client.active_stack_model
    if active.name not in ("default", STACK):
        return active.name

    def component(name: str, flavor: str, ctype: T, conf: dict[str, Any]):
        try:
            existing = client.get_stack_component(ctype, name_id_or_prefix=name)
        except KeyError:
            log.info("creating ZenML %s '%s'", ctype.value, name)
            return client.create_stack_component(
                name=name, flavor=flavor, component_type=ctype, configuration=conf
            )
        if any(existing.configuration.get(k) != v for k, v in conf.items()):
            return client.update_stack_component(name, ctype, configuration=conf)
        return existing

    artifacts = component(ARTIFACT_STORE, "local", T.ARTIFACT_STORE, {"path": str(artifact_store_dir())})
    orch = component(ORCHESTRATOR, "local", T.ORCHESTRATOR, {})
    tracker = component(TRACKER, "mlflow", T.EXPERIMENT_TRACKER, _tracker_config(tracking_uri))
    registry = component(REGISTRY, "mlflow", T.MODEL_REGISTRY, {})
    components = {
        T.ARTIFACT_STORE: artifacts.id,
        T.ORCHESTRATOR: orch.id,
        T.EXPERIMENT_TRACKER: tracker.id,
        T.MODEL_REGISTRY: registry.id,
    }
    try:
        stack = client.get_stack(STACK)
    except KeyError:
        log.info("creating ZenML stack '%s' (MLflow at %s)", STACK, redact_uri(tracking_uri))
        stack = client.create_stack(name=STACK, components=components)
    if active.id != stack.id:
        client.activate_stack(stack.id)
    return STACK


def experiment_tracker_name() -> str | None:
    from zenml.client import Client
    from zenml.enums import StackComponentType

    trackers = Client().active_stack_model.components.get(StackComponentType.EXPERIMENT_TRACKER)
    return trackers[0].name if trackers else None
