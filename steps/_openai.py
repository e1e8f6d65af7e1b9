"""The API client for the openai-backend steps: the key from the environment or a ZenML secret."""

from __future__ import annotations

from typing import Any

from tuneline.config.openai_backend import OpenAIConfig


def secret_api_key(name: str) -> str | None:
    """The `api_key` value of ZenML secret `name` (None when it has none)."""
    from zenml.client import Client

    from tuneline.errors import ConfigError, Problem

    try:
        secret = Client().get_secret(name)
    except KeyError as e:
        raise ConfigError([Problem("train.openai.secret_name", f"no ZenML secret named '{name}'")]) from e
    return secret.secret_values.get("api_key")


def api_client(cfg: OpenAIConfig) -> Any:
    from tuneline.openai_backend.client import make_client, resolve_api_key

    key = resolve_api_key(cfg.api_key_env, cfg.secret_name, secret_api_key)
    return make_client(key, cfg.base_url)
