"""Crash-and-rerun: a SIGKILLed run resumes from its last verified checkpoint, bit for bit.

Only the run that gets killed is a separate process (a SIGKILL needs one), forked from this
one; the uninterrupted run and the rerun are the very same command run in this process through
the script's own `main()`, the uninterrupted one while the victim trains (tests/_train_runs.py:
no interpreter start-up for any of them).

Also the DDP check (slow tier): two CPU processes under torchrun (gloo) train the same
steps as one process with gradient accumulation, and only rank 0 writes.
"""

from __future__ import annotations

import json
import multiprocessing
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests import _train_runs

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tests" / "_train_script.py"
STEPS, SAVE = 20, 5


def _cmd(d: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        str(SCRIPT),
        "--out", str(d / "out"),
        "--ckpt", str(d / "ckpt"),
        "--metrics", str(d / "metrics.jsonl"),
        "--steps", str(STEPS),
        "--save-steps", str(SAVE),
        *extra,
    ]  # fmt: skip


def _run(cmd: list[str], timeout: float = 120) -> None:
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _in_process(cmd: list[str]) -> None:
    assert cmd[:2] == [sys.executable, str(SCRIPT)]
    _train_runs.in_process(cmd[2:])


def _start(cmd: list[str], d: Path) -> multiprocessing.Process:
    """The victim: `cmd` in a child forked from this process, its output in d/victim.log."""
    d.mkdir(parents=True, exist_ok=True)
    return _train_runs.forked(cmd[2:], d / "victim.log")


class _KillOnceExists(threading.Thread):
    """SIGKILLs `victim` as soon as `path` exists, watching from a thread so this process can
    train meanwhile; `killed` says whether it came to that (not a timeout, not an early exit)."""

    def __init__(self, victim: multiprocessing.Process, path: Path, timeout: float = 120.0) -> None:
        super().__init__(daemon=True)
        self.victim, self.path, self.timeout, self.killed = victim, path, timeout, False

    def run(self) -> None:
        deadline = time.monotonic() + self.timeout
        while self.victim.is_alive() and time.monotonic() < deadline:
            if self.path.exists():
                self.victim.kill()
                self.killed = True
                return
            time.sleep(0.02)


def _losses(path: Path) -> dict[int, float]:
    """Per-step train loss; a re-logged step (after resume) overwrites the first record."""
    out = {}
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        if "loss" in rec:
            out[rec["step"]] = rec["loss"]
    return out


def test_kill9_mid_run_then_rerun_resumes_and_matches_uninterrupted(tmp_path):
    clean, crashed = tmp_path / "clean", tmp_path / "crashed"

    # Slow the victim down so the kill lands between checkpoints (anywhere after the 2nd one).
    victim = _start(_cmd(crashed, "--sleep", "0.15"), crashed)
    watcher = _KillOnceExists(victim, crashed / "ckpt" / f"checkpoint-{2 * SAVE}")
    watcher.start()
    try:
        _in_process(_cmd(clean))  # the uninterrupted run, while the victim trains
        watcher.join(timeout=150)
    finally:
        if victim.is_alive():
            victim.kill()
        victim.join()
    log = _train_runs.tail(crashed / "victim.log")
    assert watcher.killed, f"victim ended ({victim.exitcode}) or stalled first: {log}"
    assert victim.exitcode == -signal.SIGKILL
    assert not (crashed / "out" / "result.json").exists(), "killed before it finished"
    killed_after = len(_losses(crashed / "metrics.jsonl"))
    assert killed_after < STEPS

    _in_process(_cmd(crashed))  # the very same command
    result = json.loads((crashed / "out" / "result.json").read_text())
    resumed = result["resumed_from"]
    assert resumed is not None, "restarted from scratch instead of resuming"
    resumed_step = int(resumed.rsplit("-", 1)[1])
    assert resumed_step >= 2 * SAVE and result["global_step"] == STEPS

    # Deterministic CPU run: the remaining steps' losses and the final weights are identical.
    a, b = _losses(clean / "metrics.jsonl"), _losses(crashed / "metrics.jsonl")
    assert set(a) == set(b) == set(range(1, STEPS + 1))
    for step in range(resumed_step + 1, STEPS + 1):
        assert b[step] == a[step], (step, a[step], b[step])
    wa = load_file(clean / "out" / "adapter_model.safetensors")
    wb = load_file(crashed / "out" / "adapter_model.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def test_kill9_then_resume_keeps_the_early_stopping_decision(tmp_path):
    """The patience counter, the best score and the best weights are part of the checkpoint: a
    run killed between evaluations stops where the uninterrupted run stops and hands back the
    same best weights. At FROZEN_LR every eval loss is bit-identical (see _train_script), so the
    uninterrupted run stops at step 2 + patience * 2 = 8 on any CPU; the kill lands right after
    checkpoint-4 is committed, with one evaluation of patience spent."""
    from safetensors.torch import load_file as load

    from tests._train_script import FROZEN_LR

    common = [
        "--eval-steps",
        "2",
        "--patience",
        "3",
        "--lr",
        str(FROZEN_LR),
        "--dropout",
        "0",
        "--save-steps",
        "2",
    ]
    clean, crashed = tmp_path / "clean", tmp_path / "crashed"
    victim = _start([*_cmd(crashed), *common, "--kill-at", "4"], crashed)
    try:
        _in_process([*_cmd(clean), *common])  # while the victim trains
        victim.join(timeout=120)
    finally:
        if victim.is_alive():
            victim.kill()
            victim.join()
    assert victim.exitcode == -signal.SIGKILL, _train_runs.tail(crashed / "victim.log")
    assert not (crashed / "out" / "result.json").exists()
    _in_process([*_cmd(crashed), *common])  # the same command, no kill

    a = json.loads((clean / "out" / "result.json").read_text())
    b = json.loads((crashed / "out" / "result.json").read_text())
    assert b["resumed_from"].endswith("checkpoint-4")
    assert a["global_step"] == b["global_step"] == 8, (a["global_step"], b["global_step"])
    assert a["metrics"]["best_step"] == b["metrics"]["best_step"] == 2
    for d in (clean, crashed):
        assert json.loads((d / "out" / "tuneline_train.json").read_text())["restored_best_eval_weights"]
    wa, wb = (
        load(clean / "out" / "adapter_model.safetensors"),
        load(crashed / "out" / "adapter_model.safetensors"),
    )
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.slow
def test_ddp_two_cpu_processes_match_single_process(tmp_path):
    """2 ranks x batch 2 == 1 rank x batch 2 x grad-accum 2: same samples per optimizer step."""
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    common = ["--steps", "8", "--save-steps", "4", "--batch-size", "2", "--dropout", "0"]
    _run([*_cmd(single), *common, "--grad-accum", "2"])
    with socket.socket() as s:  # a free port: other test sessions may share this machine
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(port),
    ]
    _run([*torchrun, *_cmd(ddp)[1:], *common], timeout=300)

    a, b = _losses(single / "metrics.jsonl"), _losses(ddp / "metrics.jsonl")
    assert set(a) == set(b) == set(range(1, 9)), "rank 0 alone logs each step once"
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=1e-4, abs=1e-5), step
    wa = load_file(single / "out" / "adapter_model.safetensors")
    wb = load_file(ddp / "out" / "adapter_model.safetensors")
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-3, atol=1e-5)
    manifest = json.loads((ddp / "ckpt" / "checkpoint-8" / "manifest.json").read_text())
    assert {"rng_state_0.pth", "rng_state_1.pth"} <= set(manifest["files"]), (
        "both ranks' RNG states committed"
    )
    assert manifest["data_position"]["samples_seen"] == 8 * 2 * 2
