"""Fingerprints of the local files a config points at besides the data.

Step caching and resume identity see config values, i.e. paths. A tokenizer
directory, jinja template or model directory edited in place keeps its path, so
without hashing what is behind it a rerun would silently reuse stale outputs.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from tuneline.config import ProjectConfig

# Weight files are hashed by name, size and mtime: re-reading gigabytes on every run
# would cost more than the steps the cache saves. Everything smaller is hashed by content.
CONTENT_HASH_LIMIT = 64 * 2**20


def _hash_path(h: hashlib._Hash, path: Path, rel: str) -> None:
    st = path.stat()
    h.update(rel.encode())
    if st.st_size > CONTENT_HASH_LIMIT:
        h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
        return
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)


def local_paths(cfg: ProjectConfig) -> dict[str, Path]:
    """Config keys whose values are local files or directories that exist."""
    candidates = {
        "model.name_or_path": cfg.model.name_or_path,
        "model.tokenizer": cfg.model.tokenizer,
        "template.jinja_path": cfg.template.jinja_path,
        "train.preference.reference_model": cfg.train.preference.reference_model,
        "train.resources.accelerate_config": cfg.train.resources.accelerate_config,
    }
    out = {}
    for key, value in candidates.items():
        if not value or value.startswith("models:/"):
            continue
        p = Path(cfg.resolve_path(value))
        if p.exists():
            out[key] = p
    return out


def local_inputs_fingerprint(cfg: ProjectConfig) -> str:
    h = hashlib.sha256()
    for key, root in sorted(local_paths(cfg).items()):
        h.update(key.encode())
        if root.is_file():
            _hash_path(h, root, root.name)
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(filenames):
                p = Path(dirpath, name)
                _hash_path(h, p, str(p.relative_to(root)))
    return h.hexdigest()[:16]


def directory_fingerprint(root: str | os.PathLike[str]) -> str:
    """One directory's files (names and content), hashed as `local_inputs_fingerprint` hashes
    each local input: an edited model directory at the same path gets a new fingerprint."""
    h = hashlib.sha256()
    root = Path(root)
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            p = Path(dirpath, name)
            _hash_path(h, p, str(p.relative_to(root)))
    return h.hexdigest()[:16]
