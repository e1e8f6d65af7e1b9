"""Runs that share an artifact store never share checkpoints.

Two configs of one project (a sweep: only the seed differs) used to share
`checkpoints/<name>--<method>`: started together, one run's `train.resume=never` and staging
cleanup deleted the other's files mid-write (FileNotFoundError in `.staging/...`). The
checkpoint directory is now keyed by the run identity (steps/_training.py), so each run has
its own directory, its own `.staging`, and discards only its own checkpoints.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests._train_script import tiny_cfg
from tuneline.train import checkpoints as ckpts

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tests" / "_train_script.py"


def _cmd(d: Path, store: Path, seed: int) -> list[str]:
    return [
        sys.executable, str(SCRIPT),
        "--out", str(d / "out"), "--ckpt", "unused", "--metrics", str(d / "metrics.jsonl"),
        "--steps", "8", "--save-steps", "2", "--seed", str(seed), "--resume", "never",
        "--store", str(store), "--sleep", "0.05",
    ]  # fmt: skip


def _files(ckpt_dir: Path) -> dict[str, str]:
    return {
        str(p.relative_to(ckpt_dir)): ckpts.sha256_file(p) for p in sorted(ckpt_dir.rglob("*")) if p.is_file()
    }


def test_two_seeds_started_together_both_finish_in_their_own_directories(tmp_path):
    store = tmp_path / "store"
    runs = {11: tmp_path / "a", 12: tmp_path / "b"}
    for d in runs.values():
        d.mkdir()
    procs = {
        seed: subprocess.Popen(_cmd(d, store, seed), cwd=ROOT, stderr=subprocess.PIPE, text=True)
        for seed, d in runs.items()
    }
    for seed, proc in procs.items():
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"seed {seed}: {err[-3000:]}"

    results = {seed: json.loads((d / "out" / "result.json").read_text()) for seed, d in runs.items()}
    dirs = {seed: Path(r["checkpoint_dir"]) for seed, r in results.items()}
    assert dirs[11] != dirs[12] and {d.parent for d in dirs.values()} == {store / "checkpoints"}
    hashes = set()
    for seed, d in dirs.items():
        assert results[seed]["global_step"] == 8
        assert [p.name for p in ckpts.list_checkpoints(d)] == ["checkpoint-8", "checkpoint-6"]
        manifest = json.loads((d / "checkpoint-8" / ckpts.MANIFEST).read_text())
        hashes.add(manifest["run_identity"]["config_hash"])
        assert d.name.startswith(f"{tiny_cfg().name}--lora--")
    assert len(hashes) == 2, "each directory holds its own run"

    # Starting seed 11 over (resume=never) discards its own checkpoints only.
    before = _files(dirs[12])
    proc = subprocess.run(_cmd(runs[11], store, 11), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((runs[11] / "out" / "result.json").read_text())["resumed_from"] is None
    assert _files(dirs[12]) == before, "the other run's checkpoints are untouched"
