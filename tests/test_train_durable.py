"""The artifact-store copy of the checkpoints (non-local stores): rotated like the local
directory, and on restart the newest verified checkpoint of local vs store wins.

A second local directory stands in for the remote store: the functions in steps/_training.py
take paths and reach the store through zenml.io.fileio, which serves local paths with the
same interface as s3/gcs/azure ones.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from steps._training import restore_from_durable, rotate_durable, sync_checkpoint
from tests._train_script import tiny_cfg, tiny_data, tiny_tokenizer
from tuneline.train import checkpoints as ckpts
from tuneline.train import train

IDENTITY = {"config_hash": "c1", "data_fingerprint": "d1", "base_model": "tiny"}
KEEP = 2


def _train(local: Path, store: Path, max_steps: int):
    return train(
        tiny_cfg(max_steps=max_steps, save_steps=2, save_total_limit=KEEP),
        tiny_tokenizer(),
        tiny_data(),
        output_dir=str(local.parent / "out"),
        checkpoint_dir=str(local),
        run_identity=IDENTITY,
        on_checkpoint=lambda path: sync_checkpoint(path, str(local), str(store), KEEP),
    )


def _steps(d: Path) -> list[int]:
    return [ckpts.checkpoint_step(p) for p in ckpts.list_checkpoints(d)]


def test_store_copy_is_rotated_and_a_newer_store_copy_beats_a_stale_local_dir(tmp_path):
    local, store = tmp_path / "machine" / "ckpt", tmp_path / "store" / "run"
    _train(local, store, max_steps=4)
    stale = tmp_path / "stale"
    shutil.copytree(local, stale)  # what an older machine was left with

    result = _train(local, store, max_steps=8)
    assert result.resumed_from == str(local / "checkpoint-4")
    assert _steps(local) == [8, 6]
    assert _steps(store) == [8, 6], "the store keeps save_total_limit copies, like the local dir"

    # A restart on the machine with the stale directory: the store's step 8 wins over local 4.
    shutil.rmtree(local)
    shutil.copytree(stale, local)
    assert restore_from_durable(str(local), str(store)) == str(local / "checkpoint-8")
    assert ckpts.verify(local / "checkpoint-8").ok
    again = _train(local, store, max_steps=8)
    assert again.resumed_from == str(local / "checkpoint-8") and again.global_step == 8

    # A local checkpoint at least as new as the store's is used as is: nothing is downloaded.
    assert restore_from_durable(str(local), str(store)) is None


def test_a_corrupt_copy_falls_back_to_the_newest_verified_one(tmp_path):
    local, store = tmp_path / "machine" / "ckpt", tmp_path / "store" / "run"
    _train(local, store, max_steps=8)
    shutil.rmtree(local / "checkpoint-8")
    shutil.rmtree(local / "checkpoint-6")
    (local / "checkpoint-2").mkdir()  # an old local one, without manifest: never verified
    weights = store / "checkpoint-8" / "adapter_model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # same size: only the hash tells
    weights.write_bytes(raw)

    assert restore_from_durable(str(local), str(store)) == str(local / "checkpoint-6")
    assert not (local / "checkpoint-8").exists() and not list((local / ckpts.STAGING).glob("download-*"))


def test_rotation_never_deletes_the_newest_complete_copy(tmp_path):
    local, store = tmp_path / "machine" / "ckpt", tmp_path / "store" / "run"
    _train(local, store, max_steps=4)
    assert _steps(store) == [4, 2]
    partial = store / "checkpoint-6"  # an upload cut short: files without the manifest
    shutil.copytree(store / "checkpoint-4", partial)
    (partial / ckpts.MANIFEST).unlink()
    assert rotate_durable(str(store), keep=1) == [str(store / "checkpoint-2")]
    assert _steps(store) == [6, 4], "newest complete copy kept; the partial one is left for its re-upload"
