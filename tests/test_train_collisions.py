"""Runs that share an artifact store never share checkpoints.

Two configs of one project (a sweep: only the seed differs) used to share
`checkpoints/<name>--<method>`: started together, one run's `train.resume=never` and staging
cleanup deleted the other's files mid-write (FileNotFoundError in `.staging/...`). The
checkpoint directory is now keyed by the run identity (steps/_training.py), so each run has
its own directory, its own `.staging`, and discards only its own checkpoints.

One run is a separate process, slowed down, forked from this one; the other is the same
script's `main()` in this process (tests/_train_runs.py: no interpreter start-up for either),
started once the first has logged its first step: its start-up cleanup and its first
checkpoints land while the first run still has seven steps of 0.25 s to go, by construction
rather than by the luck of two start-ups.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from tests import _train_runs
from tests._train_script import tiny_cfg
from tuneline.train import checkpoints as ckpts


def _args(d: Path, store: Path, seed: int) -> list[str]:
    return [
        "--out", str(d / "out"), "--ckpt", "unused", "--metrics", str(d / "metrics.jsonl"),
        "--steps", "8", "--save-steps", "2", "--seed", str(seed), "--resume", "never",
        "--store", str(store),
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
    # Seed 12 in its own process, 0.25 s per step: about two seconds of training.
    log = runs[12] / "run.log"
    other = _train_runs.forked([*_args(runs[12], store, 12), "--sleep", "0.25"], log)
    try:
        deadline = time.monotonic() + 240
        while not (runs[12] / "metrics.jsonl").exists():  # it has trained a step
            assert other.is_alive(), _train_runs.tail(log)
            assert time.monotonic() < deadline, "seed 12 never started training"
            time.sleep(0.02)
        _train_runs.in_process(_args(runs[11], store, 11))
        other.join(timeout=240)
    finally:
        if other.is_alive():
            other.kill()
            other.join()
    assert other.exitcode == 0, f"seed 12: {_train_runs.tail(log)}"

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
    _train_runs.in_process(_args(runs[11], store, 11))
    assert json.loads((runs[11] / "out" / "result.json").read_text())["resumed_from"] is None
    assert _files(dirs[12]) == before, "the other run's checkpoints are untouched"
