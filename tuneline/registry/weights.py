"""A content hash of a saved model's weights: the identity of "the same trained model".

An eval-only change (more samples, another metric) re-runs evaluation on weights the train
step produced before; registering them again would give one set of weights two version
numbers and two lineages. The hash covers what defines the model's outputs (weight files and
the adapter's config: its `alpha`/`r` scale the same tensors differently) and nothing else:
tokenizer files, READMEs and metadata that embed times or paths would make equal weights differ.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
WEIGHT_CONFIGS = ("adapter_config.json",)
# Trainer checkpoints and optimiser state sit beside the weights in some layouts; they are not the model.
SKIPPED_PARTS = ("optimizer", "scheduler", "rng_state", "training_args", "scaler")


def weight_files(model_dir: str | Path) -> list[Path]:
    """The files `weights_sha256` hashes, sorted by their path relative to `model_dir`."""
    root = Path(model_dir)
    found = []
    for p in root.rglob("*"):
        if not p.is_file():
            continue
        rel = p.relative_to(root)
        if any(part.startswith("checkpoint-") for part in rel.parts[:-1]):
            continue
        if any(s in p.name for s in SKIPPED_PARTS):
            continue
        if p.name.endswith(WEIGHT_SUFFIXES) or p.name in WEIGHT_CONFIGS:
            found.append(p)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def weights_sha256(model_dir: str | Path) -> str:
    """sha256 over (relative path, size, content) of each weight file, in path order.

    Independent of mtimes, of the directory's location and of file system order, so a model
    copied to the artifact store and back hashes the same. Raises FileNotFoundError when the
    directory holds no weights: registering such a model would register nothing.
    """
    root = Path(model_dir)
    files = weight_files(root)
    if not files:
        raise FileNotFoundError(
            f"no weight files ({', '.join(WEIGHT_SUFFIXES)}, {', '.join(WEIGHT_CONFIGS)}) under {root}"
        )
    h = hashlib.sha256()
    for p in files:
        rel = p.relative_to(root).as_posix().encode()
        size = p.stat().st_size
        h.update(len(rel).to_bytes(8, "big") + rel + size.to_bytes(8, "big"))
        with p.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()
