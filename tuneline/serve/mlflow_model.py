"""Log a trained directory as an MLflow model that `mlflow.pyfunc.load_model` loads and
`mlflow models serve` serves, answering `{"messages": [...]}` with the assistant's turn.

Why a pyfunc around tuneline's own generation rather than the transformers flavor: the flavor
renders with `apply_chat_template` and stops on the model's EOS, while tuneline's answers
(and the scores evaluation registered the model on) come from `encode_prompts` (special-token
strings typed by a user stay text, one BOS iff the model expects it) and stop at the
template's end-of-turn token; and an adapter must load on the exact base training recorded,
which may be a model built from config that no hub or disk holds. The pyfunc keeps all of
that identical by running the same code: the `tuneline` package travels with the model
(`code/`), so serving needs the pinned requirements but not this project installed.

The model's artifact `hf_model` is the trained Hugging Face directory (so a downloaded version
holds `artifacts/hf_model/`, see `tuneline.tracking.hf_model_dir`), with two additions that
make it self-sufficient: `tuneline_serve.json` (the tokenize/model settings it is prompted and
loaded with) and, for an adapter, its base pinned (`tuneline.serve.base.pin_base`). Weight
files are untouched, so `weights_sha256` of the logged model equals that of the trained one.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

from tuneline.serve.base import TRAIN_SUMMARY, pin_base
from tuneline.serve.chat import SERVE_FILE, Sampling
from tuneline.tracking import HF_MODEL_ARTIFACT

# Models from code (no pickle): MLflow runs this file to build the model object.
MODEL_CODE = '''"""tuneline chat model for MLflow: loading and generation live in the tuneline package (code/)."""
from mlflow.models import set_model

from tuneline.serve.pyfunc import TunelineChatModel

set_model(TunelineChatModel())
'''
# Distributions the loading and generation code imports, pinned to the versions that trained it.
REQUIREMENTS = (
    "mlflow",
    "torch",
    "transformers",
    "tokenizers",
    "safetensors",
    "peft",
    "accelerate",
    "huggingface-hub",
    "jinja2",
    "pydantic",
    "pyyaml",
    "numpy",
    "pandas",
    "sentencepiece",
    "protobuf",
    "tiktoken",
)
# Request parameters besides sampling (see TunelineChatModel.predict).
EXTRA_PARAMS = {"system": ("string", None), "batch_size": ("long", 8)}
_PARAM_TYPES = {"temperature": "double", "top_p": "double", "repetition_penalty": "double"}


def pinned_requirements() -> list[str]:
    """`name==version` of each installed requirement; local labels (`+cpu`) are dropped so pip
    can install the same release elsewhere."""
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for name in REQUIREMENTS:
        try:
            out.append(f"{name}=={version(name).split('+')[0]}")
        except PackageNotFoundError:
            continue
    return out


def chat_signature() -> Any:
    """Input: a `messages` column of role/content lists. Output: the answer. Params: sampling."""
    from dataclasses import fields

    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, Object, ParamSchema, ParamSpec, Property, Schema

    message = Object([Property("role", "string"), Property("content", "string")])
    params = [ParamSpec(f.name, _PARAM_TYPES.get(f.name, "long"), f.default) for f in fields(Sampling)]
    params += [ParamSpec(name, dtype, default) for name, (dtype, default) in EXTRA_PARAMS.items()]
    return ModelSignature(
        inputs=Schema([ColSpec(Array(message), name="messages")]),
        outputs=Schema([ColSpec("string")]),
        params=ParamSchema(params),
    )


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _replace_file(path: Path, text: str) -> None:
    """Write a new file rather than into a hard link shared with the trained directory."""
    path.unlink(missing_ok=True)
    path.write_text(text)


def stage_model_dir(model_dir: str | Path, dest: Path, config: Any = None) -> Path:
    """`model_dir` as the `hf_model` artifact: files hard-linked (copied across devices), plus
    `tuneline_serve.json` from `config` and, for an adapter, the base pinned in its training
    summary. `config` is the project config that trained it (tokenize, model, base_dir)."""
    src = Path(model_dir)
    shutil.copytree(src, dest, copy_function=_link_or_copy)
    settings: dict[str, Any] = {}
    if config is not None:
        settings = {
            "tokenize": config.tokenize.model_dump(mode="json"),
            "model": config.model.model_dump(mode="json", include={"dtype", "attn_implementation"}),
        }
    _replace_file(dest / SERVE_FILE, json.dumps(settings, indent=2, sort_keys=True) + "\n")
    summary = dest / TRAIN_SUMMARY
    if (dest / "adapter_config.json").is_file() and summary.is_file():
        data = json.loads(summary.read_text())
        if data.get("base_model"):
            base_dir = getattr(config, "base_dir", ".") if config is not None else "."
            data["base_model"] = pin_base(data["base_model"], base_dir)
            _replace_file(summary, json.dumps(data, indent=1, default=str))
    return dest


def save_chat_model(model_dir: str | Path, path: str | Path, config: Any = None) -> Path:
    """Write `model_dir` (a trained directory) as the chat pyfunc model directory `path`."""
    import mlflow

    import tuneline

    with tempfile.TemporaryDirectory(prefix="tuneline-mlflow-model-") as tmp:
        staged = stage_model_dir(model_dir, Path(tmp) / HF_MODEL_ARTIFACT, config)
        code = Path(tmp) / "tuneline_chat_model.py"
        code.write_text(MODEL_CODE)
        with warnings.catch_warnings():
            # An input example would make MLflow load the model (a 7B one too) to validate it;
            # the signature describes the payload instead.
            warnings.filterwarnings("ignore", message=".*input example was not provided.*")
            mlflow.pyfunc.save_model(
                path=str(path),
                python_model=str(code),
                artifacts={HF_MODEL_ARTIFACT: str(staged)},
                code_paths=[str(Path(tuneline.__file__).parent)],
                pip_requirements=pinned_requirements(),
                signature=chat_signature(),
                metadata={"tuneline.method": _method(staged)},
            )
    return Path(path)


def log_chat_model(model_dir: str | Path, config: Any = None, *, artifact_path: str = "model") -> str:
    """Log `model_dir` as the chat pyfunc model in the active run's artifacts and return its URI,
    the `source` to register.

    Run artifacts rather than an MLflow 3 logged model (`log_model(name=...)`, stored beside the
    runs): a tracking server accepts a version whose source lies in the artifacts of the run it
    names, which is what `register_and_decide` registers, and such a source downloads with the
    registry's client alone (`tuneline.tracking.download_model_version`)."""
    import mlflow

    if mlflow.active_run() is None:
        raise RuntimeError("log_chat_model needs an active MLflow run to log the model to")
    with tempfile.TemporaryDirectory(prefix="tuneline-mlflow-model-") as tmp:
        saved = save_chat_model(model_dir, Path(tmp) / "model", config)
        mlflow.log_artifacts(str(saved), artifact_path=artifact_path)
    return mlflow.get_artifact_uri(artifact_path)


def _method(model_dir: Path) -> str:
    for meta in ("tuneline_model.json", TRAIN_SUMMARY):
        if (model_dir / meta).is_file():
            method = json.loads((model_dir / meta).read_text()).get("method")
            if method:
                return str(method)
    return "unknown"
