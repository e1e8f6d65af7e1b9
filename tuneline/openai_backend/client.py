"""The API client: where the key comes from, which endpoint, and chat answers.

The key is read from the environment variable `train.openai.api_key_env` or, failing that,
from a ZenML secret looked up by the caller (this package never imports ZenML). It is handed
to the client and nowhere else: not returned in results, logged, or written to any file.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from tuneline.errors import UserError

BASE_URL_ENV = "OPENAI_BASE_URL"


class MissingKeyError(UserError):
    """No API key in the environment or the configured secret."""


def resolve_api_key(
    api_key_env: str, secret_name: str | None = None, secret_lookup: Callable[[str], str | None] | None = None
) -> str:
    key = os.environ.get(api_key_env, "").strip()
    if key:
        return key
    if secret_name and secret_lookup is not None:
        key = (secret_lookup(secret_name) or "").strip()
        if key:
            return key
    where = f"${api_key_env}" + (f" or the ZenML secret '{secret_name}' (key api_key)" if secret_name else "")
    raise MissingKeyError(
        f"train.openai: no API key in {where}; export {api_key_env}=... or set train.openai.secret_name "
        "to a ZenML secret holding it"
    )


def resolve_base_url(configured: str | None) -> str | None:
    """The config's endpoint, else $OPENAI_BASE_URL, else the client's default (api.openai.com)."""
    return configured or os.environ.get(BASE_URL_ENV) or None


def make_client(
    api_key: str, base_url: str | None = None, *, max_retries: int = 3, timeout: float = 120
) -> Any:
    from openai import OpenAI

    return OpenAI(
        api_key=api_key, base_url=resolve_base_url(base_url), max_retries=max_retries, timeout=timeout
    )


def chat_answer(
    client: Any, model: str, messages: list[dict[str, Any]], *, max_tokens: int, seed: int = 0
) -> str:
    """One greedy answer (temperature 0, fixed seed), as local evaluation decodes."""
    response = client.chat.completions.create(
        model=model,
        messages=messages,
        temperature=0,
        max_completion_tokens=max_tokens,
        seed=seed,
    )
    return (response.choices[0].message.content or "").strip()
