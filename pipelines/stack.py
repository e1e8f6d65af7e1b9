"""First-run bootstrap of the local ZenML stack, reused (and kept in sync) afterwards.

Everything lives under TUNELINE_HOME so one folder holds all local state. Runs only
when called (from run.py), never at import time.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tuneline.errors import ConfigError, Problem
from tuneline.home import artifact_store_dir, redact_uri, tuneline_home, zenml_config_dir

log = logging.getLogger("tuneline")

STACK = "tuneline"
ORCHESTRATOR = "tuneline-local"
ARTIFACT_STORE = "tuneline-artifacts"
TRACKER = "tuneline-mlflow"
REGISTRY = "tuneline-mlflow-registry"
CREDENTIALS_SECRET = "tuneline-mlflow-credentials"
BOOTSTRAP_LOCK = "bootstrap.lock"
# Setup takes seconds (a first run: ZenML's schema migrations, under a minute); ten minutes of
# waiting means a holder that is stuck, not busy.
BOOTSTRAP_LOCK_TIMEOUT_S = 600.0


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
    # A bar per artifact upload/download (model logging, the champion's download) adds nothing
    # to the step's own progress line.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


class _DropNoise(logging.Filter):
    """ZenML warns on every step that it cannot disable autologging for absent frameworks."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Failed to disable MLflow autologging" not in record.getMessage()


def quiet_known_noise() -> None:
    for name in ("zenml.integrations.mlflow.experiment_trackers.mlflow_experiment_tracker",):
        logging.getLogger(name).addFilter(_DropNoise())
    from tuneline.report.progress import quiet_library_progress

    quiet_library_progress()  # no "Loading weights" / "Writing model shards" bar per model load or save


def prepare_dashboard() -> None:
    """Make the local ZenML dashboard open on the runs.

    On a first visit the dashboard (ZenML 0.98) sends the user it logs in as, `default` on a local
    server without authentication, to an onboarding survey (name, e-mail, a pre-ticked newsletter
    box) until that user has `email_opted_in` set and `finished_onboarding_survey` in its metadata.
    Both are recorded here in the local store the server reads, as "declined" (no e-mail, no
    newsletter). The "what's new" notices are turned off too: they fetch a changelog from GitHub.
    Creates the store on first use; a client connected to a ZenML server is left alone.
    """
    from zenml.client import Client
    from zenml.constants import DEFAULT_USERNAME, FINISHED_ONBOARDING_SURVEY_KEY
    from zenml.enums import StoreType

    client = Client()
    if client.zen_store.type != StoreType.SQL:
        return
    user = client.get_user(os.environ.get("ZENML_DEFAULT_USER_NAME", DEFAULT_USERNAME))
    meta = dict((user.metadata.user_metadata if user.metadata else None) or {})
    if user.body.email_opted_in is None or not meta.get(FINISHED_ONBOARDING_SURVEY_KEY):
        client.update_user(
            user.id,
            updated_email_opt_in=False,
            updated_metadata={**meta, FINISHED_ONBOARDING_SURVEY_KEY: True},
        )
    settings = client.get_settings()
    if settings.display_announcements or settings.display_updates:
        from zenml.models import ServerSettingsUpdate

        # Through the store with only these fields set: Client.update_server_settings also sends the
        # unset server name as NULL, which the SQL store refuses (ZenML 0.98).
        client.zen_store.update_server_settings(
            ServerSettingsUpdate(display_announcements=False, display_updates=False)
        )


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


@contextmanager
def bootstrap_lock(timeout_s: float = BOOTSTRAP_LOCK_TIMEOUT_S) -> Iterator[None]:
    """Serialise the setup every run does before its pipeline starts, across processes sharing
    a TUNELINE_HOME.

    Two runs started together on a fresh home otherwise race: ZenML's SQLite store is created
    and migrated by both (the second sees a half-migrated schema and refuses it), the stack's
    components and the MLflow experiment are created twice (unique names). The lock is held
    only for that setup; the pipelines themselves run concurrently.
    """
    from tuneline.registry.lock import held_file_lock

    with held_file_lock(
        tuneline_home() / BOOTSTRAP_LOCK,
        timeout_s,
        "another tuneline run in this TUNELINE_HOME is setting up its stack",
    ):
        yield


def ensure_stack(tracking_uri: str) -> str:
    """Create the tuneline stack on first use; later runs reuse it and sync the tracking URI.

    A user who activated another stack of their own (with an MLflow tracker) keeps it.
    Returns the name of the active stack. Opens ZenML's store (creating it in a fresh home)
    under the bootstrap lock: call this before anything else touches ZenML's store, importing
    a pipeline's steps included.
    """
    import zenml.client  # noqa: F401  (the slow import, outside the lock)

    with bootstrap_lock():
        return _ensure_stack(tracking_uri)


def _ensure_stack(tracking_uri: str) -> str:
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
