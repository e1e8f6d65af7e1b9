"""A fine-tuned API model as a registry version: an MLflow pyfunc that answers through chat
completions, with the same `{"messages": [...]}` interface as a locally trained version.

The version holds no weights and no key: `openai_model.json` names the model, the endpoint
when the config chose one, and the environment variable the key is read from when the model
is loaded. Serving it needs that variable set (and `OPENAI_BASE_URL` for a compatible
endpoint not recorded in the file).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import warnings
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd

from tuneline.errors import UserError
from tuneline.openai_backend.evaluate import MODEL_FILE

ARTIFACT = "openai_model"
MODEL_CODE = '''"""tuneline OpenAI fine-tuned model for MLflow: the client code lives in the tuneline package (code/)."""
from mlflow.models import set_model

from tuneline.openai_backend.pyfunc import OpenAIChatModel

set_model(OpenAIChatModel())
'''
REQUIREMENTS = ("mlflow", "openai", "pandas", "numpy", "pydantic", "pyyaml")


def model_identity(model_id: str) -> str:
    """Stands in for `weights.sha256`: one registry version per fine-tuned model id."""
    return hashlib.sha256(f"openai:{model_id}".encode()).hexdigest()


class OpenAIChatModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context: Any) -> None:
        from tuneline.openai_backend.client import make_client, resolve_api_key

        info = json.loads(Path(context.artifacts[ARTIFACT]).read_text())
        self.model = info["model"]
        self.client = make_client(
            resolve_api_key(info.get("api_key_env") or "OPENAI_API_KEY"), info.get("base_url")
        )

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> list[str]:
        from tuneline.serve.pyfunc import conversations_from_input

        params = dict(params or {})
        system = params.get("system") or None
        out = []
        for messages in conversations_from_input(model_input):
            if system and messages[0].get("role") != "system":
                messages = [{"role": "system", "content": system}, *messages]
            kwargs: dict[str, Any] = {
                "model": self.model,
                "messages": messages,
                "temperature": float(params.get("temperature") or 0.0),
                "max_completion_tokens": int(params.get("max_new_tokens") or 256),
            }
            if params.get("top_p") is not None:
                kwargs["top_p"] = float(params["top_p"])
            if params.get("seed") is not None:
                kwargs["seed"] = int(params["seed"])
            response = self.client.chat.completions.create(**kwargs)
            out.append((response.choices[0].message.content or "").strip())
        return out


def model_info(
    model_id: str, *, base_model: str, job_id: str, base_url: str | None, api_key_env: str
) -> dict:
    from urllib.parse import urlsplit

    if base_url and (urlsplit(base_url).username or urlsplit(base_url).password):
        raise UserError("train.openai.base_url must not carry credentials")
    return {
        "model": model_id,
        "base_model": base_model,
        "job_id": job_id,
        "base_url": base_url,
        "api_key_env": api_key_env,
    }


def _requirements() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for name in REQUIREMENTS:
        try:
            out.append(f"{name}=={version(name).split('+')[0]}")
        except PackageNotFoundError:
            continue
    return out


def save_openai_model(info: dict, path: str | Path) -> Path:
    import tuneline
    from tuneline.serve.mlflow_model import chat_signature

    with tempfile.TemporaryDirectory(prefix="tuneline-openai-model-") as tmp:
        spec = Path(tmp) / MODEL_FILE
        spec.write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
        code = Path(tmp) / "tuneline_openai_model.py"
        code.write_text(MODEL_CODE)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*input example was not provided.*")
            mlflow.pyfunc.save_model(
                path=str(path),
                python_model=str(code),
                artifacts={ARTIFACT: str(spec)},
                code_paths=[str(Path(tuneline.__file__).parent)],
                pip_requirements=_requirements(),
                signature=chat_signature(),
                metadata={"tuneline.method": "openai", "tuneline.openai_model": info["model"]},
            )
    return Path(path)


def log_openai_model(info: dict, *, artifact_path: str = "model") -> str:
    """Log the pyfunc in the active run's artifacts and return its URI (the version's source),
    as `tuneline.serve.mlflow_model.log_chat_model` does for local weights."""
    import mlflow

    if mlflow.active_run() is None:
        raise RuntimeError("log_openai_model needs an active MLflow run")
    with tempfile.TemporaryDirectory(prefix="tuneline-openai-model-") as tmp:
        saved = save_openai_model(info, Path(tmp) / "model")
        mlflow.log_artifacts(str(saved), artifact_path=artifact_path)
    return mlflow.get_artifact_uri(artifact_path)
