"""Where local state lives: one folder, `.tuneline/` in the project, or $TUNELINE_HOME.

Keeping ZenML's store, the artifact store and the MLflow database together means a
user can delete one folder to start over, and tests can isolate state per test.
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def tuneline_home() -> Path:
    env = os.environ.get("TUNELINE_HOME")
    return Path(env).expanduser().resolve() if env else PROJECT_ROOT / ".tuneline"


def zenml_config_dir() -> Path:
    return tuneline_home() / "zenml"


def artifact_store_dir() -> Path:
    return tuneline_home() / "artifacts"


def default_mlflow_uri() -> str:
    return f"sqlite:///{tuneline_home() / 'mlflow.db'}"


def mlflow_tracking_uri(configured: str | None = None) -> str:
    """Config first, then MLFLOW_TRACKING_URI, then the embedded SQLite file."""
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or default_mlflow_uri()


def missing_local_store(uri: str) -> Path | None:
    """The SQLite file a `sqlite:///` URI names when it does not exist, else None.

    Reading from a missing file would make MLflow create an empty store and then report the
    model as unknown, which sends the user looking for the wrong problem; commands that only
    read the registry check this first and name the file instead.
    """
    if not uri.startswith("sqlite:///"):
        return None
    path = Path(uri.removeprefix("sqlite:///").split("?", 1)[0])
    return None if path.exists() else path


def redact_uri(uri: str) -> str:
    """Drop user:password@ from a URI before it is printed or logged."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(uri)
    if parts.username or parts.password:
        host = parts.hostname or ""
        if parts.port:
            host += f":{parts.port}"
        return urlunsplit((parts.scheme, f"***@{host}", parts.path, parts.query, parts.fragment))
    return uri
