"""Durable checkpoints: written aside, committed by rename, verified by a manifest.

A checkpoint directory only ever appears under its final name once every file in it has
been written, fsynced and hashed into `manifest.json`; a crash mid-write leaves a staging
directory that is never mistaken for a checkpoint. On restart the newest checkpoint whose
files still match their hashes is used, so a truncated or bit-flipped checkpoint costs
`save_steps` of work instead of the run. The manifest also records who the run was
(config hash, data fingerprint, base model) so a resume never silently mixes two runs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneline.errors import UserError

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
STAGING = ".staging"
QUARANTINE = ".quarantine"
_NAME = re.compile(r"^checkpoint-(\d+)$")


class CheckpointWarning(UserWarning):
    """A checkpoint was skipped because it failed verification."""


class ResumeMismatchError(UserError):
    """The newest good checkpoint belongs to a different run (config, data or base model changed)."""

    def __init__(self, checkpoint: Path, differences: list[str]):
        self.checkpoint = checkpoint
        self.differences = differences
        lines = [f"refusing to resume from {checkpoint}: the run changed since it was written:"]
        lines += [f"  - {d}" for d in differences]
        lines.append(
            f"Fix: start over with `--set train.resume=never` (discards these checkpoints), or delete "
            f"{checkpoint.parent}, or restore the previous config/data/base model to continue that run."
        )
        super().__init__("\n".join(lines))


@dataclass
class Verdict:
    path: Path
    step: int
    ok: bool
    reason: str = ""
    manifest: dict[str, Any] | None = None


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    """Make a rename durable: the directory entry itself must reach the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def checkpoint_step(path: Path) -> int | None:
    m = _NAME.match(path.name)
    return int(m.group(1)) if m else None


def list_checkpoints(checkpoint_dir: str | Path) -> list[Path]:
    """Committed checkpoint directories, newest (highest step) first."""
    root = Path(checkpoint_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and checkpoint_step(p) is not None]
    return sorted(found, key=lambda p: checkpoint_step(p) or 0, reverse=True)


def write_manifest(ckpt: Path, run_identity: dict[str, Any], extra: dict[str, Any] | None = None) -> dict:
    """Hash and fsync every file, then write the manifest last (it is the commit record)."""
    files: dict[str, dict[str, Any]] = {}
    for p in sorted(ckpt.rglob("*")):
        if not p.is_file() or p.name == MANIFEST:
            continue
        with open(p, "rb") as f:
            os.fsync(f.fileno())
        files[p.relative_to(ckpt).as_posix()] = {"sha256": sha256_file(p), "size": p.stat().st_size}
    manifest = {
        "format": MANIFEST_FORMAT,
        "step": checkpoint_step(ckpt),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "run_identity": dict(run_identity),
        "files": files,
        **(extra or {}),
    }
    tmp = ckpt / (MANIFEST + ".tmp")
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, ckpt / MANIFEST)
    _fsync_dir(ckpt)
    return manifest


def commit(
    staged: Path, final: Path, run_identity: dict[str, Any], extra: dict[str, Any] | None = None
) -> Path:
    """Manifest the staged checkpoint and move it into place with one atomic rename.

    An older directory with the same name (a corrupt leftover from a crashed run) is
    moved out of the way first, never merged into.
    """
    write_manifest(staged, run_identity, extra)
    if final.exists():
        quarantine(final, "replaced by a new checkpoint of the same step")
    os.replace(staged, final)
    _fsync_dir(final.parent)
    return final


def verify(ckpt: Path) -> Verdict:
    """Every file named in the manifest must exist with the recorded size and sha256."""
    step = checkpoint_step(ckpt) or -1
    mpath = ckpt / MANIFEST
    if not mpath.is_file():
        return Verdict(ckpt, step, False, "no manifest.json (partial or foreign checkpoint)")
    try:
        manifest = json.loads(mpath.read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return Verdict(ckpt, step, False, f"unreadable manifest: {e}")
    if not files:
        return Verdict(ckpt, step, False, "manifest lists no files")
    for rel, meta in files.items():
        p = ckpt / rel
        if not p.is_file():
            return Verdict(ckpt, step, False, f"missing file {rel}")
        if p.stat().st_size != meta.get("size"):
            return Verdict(ckpt, step, False, f"{rel}: size {p.stat().st_size} != {meta.get('size')}")
        if sha256_file(p) != meta.get("sha256"):
            return Verdict(ckpt, step, False, f"{rel}: sha256 mismatch (corrupted)")
    return Verdict(ckpt, step, True, manifest=manifest)


def identity_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    diffs = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key), current.get(key)
        if a != b:
            diffs.append(f"{key}: checkpoint has {a!r}, this run has {b!r}")
    return diffs


def find_resume(checkpoint_dir: str | Path, run_identity: dict[str, Any]) -> Verdict | None:
    """The newest verified checkpoint, or None. Bad ones are warned about and quarantined so
    they can neither be picked later nor count towards rotation.

    Raises ResumeMismatchError when the newest good checkpoint belongs to a different run:
    silently starting over would throw away its work, silently continuing would mix runs.
    """
    for ckpt in list_checkpoints(checkpoint_dir):
        verdict = verify(ckpt)
        if not verdict.ok:
            msg = f"skipping checkpoint {ckpt}: {verdict.reason}"
            warnings.warn(msg, CheckpointWarning, stacklevel=2)
            logger.warning(msg)
            quarantine(ckpt, verdict.reason)
            continue
        diffs = identity_differences((verdict.manifest or {}).get("run_identity", {}), run_identity)
        if diffs:
            raise ResumeMismatchError(ckpt, diffs)
        return verdict
    return None


def prepare_resume(checkpoint_dir: str | Path, run_identity: dict[str, Any], resume: str) -> Verdict | None:
    """Where a run starts (rank 0 only): staging leftovers of a killed run are dropped, then the
    newest verified checkpoint is picked, or with `train.resume=never` every checkpoint of this
    directory is discarded."""
    root = Path(checkpoint_dir)
    root.mkdir(parents=True, exist_ok=True)
    clear_staging(root)
    if resume == "never":
        dropped = discard_all(root)
        if dropped:
            logger.warning("train.resume=never: discarded %d old checkpoint(s) in %s", len(dropped), root)
        return None
    return find_resume(root, run_identity)


def rotate(checkpoint_dir: str | Path, keep: int, protect: Path) -> list[Path]:
    """Keep the `keep` newest checkpoints; `protect` (the one just committed and verified) is
    never deleted, whatever `keep` says."""
    removed = []
    kept = 0
    for ckpt in list_checkpoints(checkpoint_dir):
        if ckpt == protect or kept < keep - 1:
            if ckpt != protect:
                kept += 1
            continue
        _remove(ckpt)
        removed.append(ckpt)
    return removed


def discard_all(checkpoint_dir: str | Path) -> list[Path]:
    """resume=never: old checkpoints of another run would otherwise be resumed next time."""
    found = list_checkpoints(checkpoint_dir)
    for ckpt in found:
        _remove(ckpt)
    return found


def clear_staging(checkpoint_dir: str | Path) -> None:
    """Half-written checkpoints of a killed run live only here; they are never resumable."""
    shutil.rmtree(Path(checkpoint_dir) / STAGING, ignore_errors=True)


def _remove(ckpt: Path) -> None:
    """Rename out of the checkpoint namespace first so a crash mid-delete never leaves a
    half-deleted directory under a checkpoint name."""
    trash = ckpt.parent / STAGING / f"trash-{ckpt.name}-{os.getpid()}-{time.monotonic_ns()}"
    trash.parent.mkdir(parents=True, exist_ok=True)
    os.replace(ckpt, trash)
    shutil.rmtree(trash, ignore_errors=True)


def quarantine(ckpt: Path, reason: str) -> None:
    """Keep a bad checkpoint for inspection, out of the way of resume and rotation."""
    dest = ckpt.parent / QUARANTINE / ckpt.name
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(ckpt, dest)
    (dest / "QUARANTINED.txt").write_text(reason + "\n")
