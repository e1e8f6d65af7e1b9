"""Checkpoints are committed atomically with a manifest, verified on resume, rotated safely."""

from __future__ import annotations

import json
import warnings

import pytest

from tests._train_script import tiny_cfg, tiny_data, tiny_tokenizer
from tuneline.errors import UserError
from tuneline.train import checkpoints as ckpts
from tuneline.train import train
from tuneline.train.checkpoints import CheckpointWarning, ResumeMismatchError

IDENTITY = {"config_hash": "c1", "data_fingerprint": "d1", "base_model": "tiny"}


def _train(tmp_path, identity=IDENTITY, **overrides):
    committed: list[str] = []
    result = train(
        tiny_cfg(**{"max_steps": 6, "save_steps": 2, "save_total_limit": 3, **overrides}),
        tiny_tokenizer(),
        tiny_data(),
        output_dir=str(tmp_path / "out"),
        checkpoint_dir=str(tmp_path / "ckpt"),
        run_identity=identity,
        on_checkpoint=committed.append,
    )
    return result, committed


def _names(tmp_path):
    return sorted(p.name for p in ckpts.list_checkpoints(tmp_path / "ckpt"))


def test_checkpoints_carry_a_manifest_and_identity(tmp_path):
    result, committed = _train(tmp_path)
    assert [c.rsplit("-", 1)[1] for c in committed] == ["2", "4", "6"]
    assert _names(tmp_path) == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    m = json.loads((tmp_path / "ckpt" / "checkpoint-6" / "manifest.json").read_text())
    assert m["run_identity"] == IDENTITY and m["step"] == 6
    assert m["data_position"]["global_step"] == 6 and m["data_position"]["samples_seen"] == 24
    for required in (
        "adapter_model.safetensors",
        "optimizer.pt",
        "scheduler.pt",
        "rng_state.pth",
        "trainer_state.json",
    ):
        assert required in m["files"], required
    assert all(len(f["sha256"]) == 64 for f in m["files"].values())
    assert ckpts.verify(tmp_path / "ckpt" / "checkpoint-6").ok
    assert not list((tmp_path / "ckpt").glob(".staging/checkpoint-*")), "nothing left half-committed"
    assert result.resumed_from is None


def test_rotation_keeps_the_newest(tmp_path):
    _train(tmp_path, save_total_limit=1)
    assert _names(tmp_path) == ["checkpoint-6"]


def test_rotate_never_deletes_the_protected_checkpoint(tmp_path):
    for step in (2, 4, 6):
        d = tmp_path / f"checkpoint-{step}"
        d.mkdir()
        (d / "w").write_text(str(step))
    protect = tmp_path / "checkpoint-4"  # e.g. 6 is a leftover with a higher step
    ckpts.rotate(tmp_path, keep=1, protect=protect)
    assert [p.name for p in ckpts.list_checkpoints(tmp_path)] == ["checkpoint-4"]


def test_flipped_byte_is_skipped_with_warning_and_resumes_from_previous(tmp_path):
    _train(tmp_path)
    weights = tmp_path / "ckpt" / "checkpoint-6" / "adapter_model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    weights.write_bytes(raw)
    assert not ckpts.verify(weights.parent).ok

    with pytest.warns(CheckpointWarning, match=r"checkpoint-6.*sha256"):
        result, committed = _train(tmp_path)
    assert result.resumed_from == str(tmp_path / "ckpt" / "checkpoint-4")
    assert result.global_step == 6
    assert committed == [str(tmp_path / "ckpt" / "checkpoint-6")], "only the lost steps were redone"
    assert ckpts.verify(tmp_path / "ckpt" / "checkpoint-6").ok
    assert (tmp_path / "ckpt" / ".quarantine" / "checkpoint-6" / "QUARANTINED.txt").is_file()


def test_partial_checkpoint_without_manifest_is_skipped(tmp_path):
    _train(tmp_path, max_steps=4)
    partial = tmp_path / "ckpt" / "checkpoint-8"
    partial.mkdir()
    (partial / "adapter_model.safetensors").write_bytes(b"truncated")
    (tmp_path / "ckpt" / "checkpoint-4" / "optimizer.pt").unlink()  # a missing file is just as bad
    with pytest.warns(CheckpointWarning) as record:
        result, _ = _train(tmp_path)
    reasons = " ".join(str(w.message) for w in record)
    assert "checkpoint-8" in reasons and "no manifest" in reasons
    assert "checkpoint-4" in reasons and "missing file optimizer.pt" in reasons
    assert result.resumed_from == str(tmp_path / "ckpt" / "checkpoint-2")


def test_changed_identity_is_refused_with_the_differences(tmp_path):
    _train(tmp_path, max_steps=4)
    changed = {**IDENTITY, "config_hash": "c2", "data_fingerprint": "d2"}
    with pytest.raises(ResumeMismatchError) as e:
        _train(tmp_path, identity=changed)
    err = e.value
    assert isinstance(err, UserError)
    assert len(err.differences) == 2
    assert any("config_hash" in d and "'c1'" in d and "'c2'" in d for d in err.differences)
    assert any("data_fingerprint" in d for d in err.differences)
    assert "train.resume=never" in str(err)
    assert _names(tmp_path) == ["checkpoint-2", "checkpoint-4"], "refusal touches nothing"

    # The advertised fix works: start over, old checkpoints discarded.
    result, _ = _train(tmp_path, identity=changed, resume="never", max_steps=2)
    assert result.resumed_from is None and _names(tmp_path) == ["checkpoint-2"]
    m = json.loads((tmp_path / "ckpt" / "checkpoint-2" / "manifest.json").read_text())
    assert m["run_identity"] == changed


def test_rerun_after_completion_resumes_and_does_no_more_work(tmp_path):
    _train(tmp_path, max_steps=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CheckpointWarning)
        again, committed = _train(tmp_path, max_steps=4)
    assert again.resumed_from == str(tmp_path / "ckpt" / "checkpoint-4")
    assert again.global_step == 4 and committed == []
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()
