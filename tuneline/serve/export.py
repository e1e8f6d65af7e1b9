"""A trained model as a directory other serving stacks load: plain transformers, vLLM, TGI.

A full fine-tune (or a LoRA merged with `merge=True`) becomes a Hugging Face model directory:
safetensors weights, the tokenizer with the chat template it was trained on, `use_cache` on,
and a `generation_config.json` whose EOS ids include the template's end-of-turn token, so
`generate()` and vLLM stop where tuneline's own generation stops instead of running on into
the next turn. A LoRA without `merge` stays a PEFT adapter directory whose
`adapter_config.json` names its exact base (absolute local path, or hub name and revision).

The export is written to a temporary sibling directory and renamed into place only when
complete; a non-empty destination is refused, never overwritten.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneline.config import ModelConfig, ProjectConfig
from tuneline.errors import UserError
from tuneline.export import merge_lora
from tuneline.serve.base import describe_base, pin_base, recorded_base
from tuneline.serve.chat import SERVE_FILE, own_tokenizer, serving_config
from tuneline.train.loading import is_adapter_dir

__all__ = ["Exported", "export_model", "merge_lora"]


@dataclass
class Exported:
    path: str
    kind: str  # "full", "merged" or "adapter"
    eos_token_ids: list[int]
    base: str | None = None  # an adapter's base: absolute local path or hub name
    base_revision: str | None = None
    notes: tuple[str, ...] = ()

    def serve_command(self) -> str:
        """How to serve it with vLLM (not run here: vLLM needs a GPU and is not a dependency)."""
        if self.kind != "adapter":
            return f"vllm serve {self.path}"
        rank = json.loads((Path(self.path) / "adapter_config.json").read_text()).get("r", 16)
        revision = f" --revision {self.base_revision}" if self.base_revision else ""
        return (
            f"vllm serve {self.base}{revision} --enable-lora --lora-modules "
            f"{Path(self.path).name}={self.path} --max-lora-rank {max(int(rank), 8)}"
        )


def refuse_non_empty(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(
            f"--out {out}: {'is not a directory' if not out.is_dir() else 'is not empty'}; export never "
            "overwrites, give a new or empty directory"
        )


def _copy_top_level_files(src: Path, dst: Path) -> None:
    """The model's own files; subdirectories (a training `merged/` copy, checkpoints) stay behind."""
    for f in src.iterdir():
        if f.is_file() and f.name != SERVE_FILE:
            shutil.copy2(f, dst / f.name)


def write_generation_config(model_dir: Path, out: Path, tokenizer: Any) -> list[int]:
    """generation_config.json with the end-of-turn token(s) and EOS as stop ids."""
    from transformers import AutoConfig, GenerationConfig

    from tuneline.tokenize import end_of_turn_token_ids

    if (model_dir / "generation_config.json").is_file():
        gen = GenerationConfig.from_pretrained(model_dir)
    elif (model_dir / "config.json").is_file():
        gen = GenerationConfig.from_model_config(AutoConfig.from_pretrained(model_dir))
    else:
        gen = GenerationConfig()
    stop = end_of_turn_token_ids(tokenizer)
    gen.eos_token_id = stop if len(stop) > 1 else stop[0]
    # The tokenizer's ids, not an architecture's defaults that a model built from config keeps.
    gen.pad_token_id = tokenizer.pad_token_id
    gen.bos_token_id = tokenizer.bos_token_id
    gen._from_model_config = False  # this file, not config.json, is what generate() should follow
    gen.save_pretrained(out)
    return stop


def _serving_model_config(config_file: Path, tokenizer: Any, stop: list[int]) -> None:
    """config.json as serving wants it: the KV cache training switched off back on, and the
    special ids of the tokenizer the model was trained with (a model built from config keeps
    its architecture's defaults, which name other tokens)."""
    conf = json.loads(config_file.read_text())
    conf["use_cache"] = True
    conf["eos_token_id"] = stop if len(stop) > 1 else stop[0]
    for key, value in (("bos_token_id", tokenizer.bos_token_id), ("pad_token_id", tokenizer.pad_token_id)):
        if value is None:
            conf.pop(key, None)
        else:
            conf[key] = value
    config_file.write_text(json.dumps(conf, indent=2, sort_keys=True) + "\n")


def _base_config(model_dir: Path, cfg: ProjectConfig) -> ModelConfig:
    recorded = recorded_base(model_dir) or {}
    return ModelConfig.model_validate({**recorded, "trust_remote_code": cfg.model.trust_remote_code})


def _export_adapter(model_dir: Path, tmp: Path, cfg: ProjectConfig) -> tuple[dict[str, Any], list[str]]:
    base = pin_base(recorded_base(model_dir) or {}, cfg.base_dir)
    if base.get("from_config") is not None:
        raise UserError(
            f"{model_dir}: this adapter's base was built from model.from_config ({describe_base(base)}), "
            "random weights that exist on no disk or hub, so an adapter alone cannot be served; "
            "export with --merge for a standalone model"
        )
    _copy_top_level_files(model_dir, tmp)
    conf_file = tmp / "adapter_config.json"
    conf = json.loads(conf_file.read_text())
    conf["base_model_name_or_path"] = base["name_or_path"]
    conf["revision"] = base.get("revision")
    conf_file.write_text(json.dumps(conf, indent=2, sort_keys=True) + "\n")
    notes = []
    if conf.get("trainable_token_indices") or conf.get("modules_to_save"):
        notes.append(
            "this adapter also trains whole layers or embedding rows (modules_to_save / trainable tokens, "
            "e.g. for added chat-template tokens); vLLM's LoRA support cannot load those: use --merge"
        )
    return base, notes


def export_model(
    model_dir: str | Path, out_dir: str | Path, *, merge: bool = False, cfg: ProjectConfig | None = None
) -> Exported:
    """Export the trained directory `model_dir` to `out_dir` (see the module docstring)."""
    model_dir = Path(model_dir)
    out = Path(out_dir).expanduser().absolute()
    refuse_non_empty(out)
    cfg = cfg or serving_config(model_dir)
    tokenizer = own_tokenizer(str(model_dir), cfg)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        tmp.chmod(0o777 & ~_umask())  # mkdtemp's 0700 would follow the rename
        notes: list[str] = []
        base: dict[str, Any] = {}
        if not is_adapter_dir(model_dir):
            kind = "full"
            _copy_top_level_files(model_dir, tmp)
            if merge:
                notes.append("--merge has nothing to do: this is a full model, exported as it is")
        elif merge:
            kind = "merged"
            merge_lora(str(model_dir), _base_config(model_dir, cfg), str(tmp), base_dir=cfg.base_dir)
        else:
            kind = "adapter"
            base, notes = _export_adapter(model_dir, tmp, cfg)
        stop = write_generation_config(model_dir if kind != "merged" else tmp, tmp, tokenizer)
        if kind != "adapter":
            _serving_model_config(tmp / "config.json", tokenizer, stop)
        if out.exists():
            out.rmdir()  # empty (checked above): the rename needs it gone
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Exported(str(out), kind, stop, base.get("name_or_path"), base.get("revision"), tuple(notes))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
