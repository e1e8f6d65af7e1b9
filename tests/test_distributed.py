"""train_distributed: train() in launched worker processes, reported back as if in-process.

Fast tier: the launch command choice, live metric/checkpoint streaming and crash reporting
(against a stand-in worker script, no training), and a real worker's UserError coming back
as the same UserError. Slow tier: two CPU ranks (torchrun, gloo) on the tiny llama match
one in-process rank with gradient accumulation 2.
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
import torch

from tests._train_script import tiny_cfg, tiny_data, tiny_tokenizer
from tuneline.errors import ConfigError, UserError
from tuneline.train import TrainResult, distributed, train

IDENTITY = {"config_hash": "c1", "data_fingerprint": "d1", "base_model": "tiny"}


@pytest.fixture
def private_tmp(tmp_path, monkeypatch) -> Path:
    """Work dirs land here, so a test can see what was kept or removed."""
    d = tmp_path / "tmp"
    d.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(d))
    return d


def _call(tmp_path, cfg, data=None, **kw):
    logs: list[tuple[int, dict]] = []
    result = distributed.train_distributed(
        cfg,
        tiny_tokenizer(),
        data if data is not None else tiny_data(8, validation=0),
        output_dir=str(tmp_path / "out"),
        checkpoint_dir=str(tmp_path / "ckpt"),
        run_identity=IDENTITY,
        log_metrics=lambda m, s: logs.append((s, dict(m))),
        **kw,
    )
    return result, logs


# ---------------------------------------------------------------------------- launch command


def test_launch_command_per_machine():
    cpu2 = distributed.launch_command("W", 2, None, cuda=False)
    assert cpu2[1:5] == ["-m", "torch.distributed.run", "--nproc_per_node", "2"]
    assert cpu2[-3:] == ["-m", "tuneline.train.distributed_worker", "W"]
    assert distributed.launch_command("W", 1, None, cuda=False)[1:] == [
        "-m",
        "tuneline.train.distributed_worker",
        "W",
    ]
    gpu = distributed.launch_command("W", 4, None, cuda=True)
    assert gpu[1:3] == ["-m", "accelerate.commands.launch"] and "--multi_gpu" in gpu
    assert gpu[gpu.index("--num_processes") + 1] == "4"
    fsdp = distributed.launch_command("W", 2, "fsdp.yaml", cuda=True)
    assert fsdp[fsdp.index("--config_file") + 1] == "fsdp.yaml" and "--multi_gpu" not in fsdp


# ---------------------------------------------------------------------------- stand-in worker

# Writes what a real rank 0 writes, but waits for the parent to have forwarded the first metric
# before finishing: the test only passes if metrics are streamed while the worker still runs.
FAKE_WORKER = textwrap.dedent(
    """
    import json, os, sys, time
    from pathlib import Path
    wd = Path(sys.argv[1])
    ck = Path(os.environ["FAKE_CKPT"])
    with open(wd / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 1, "metrics": {"loss": 2.5}}) + "\\n")
        f.write(json.dumps({"step": 2, "metrics": {"loss": float("nan")}}) + "\\n")
        f.write('{"step": 3, "metr')  # a line still being written is not consumed
        f.flush()
        deadline = time.monotonic() + 30
        while not (wd / "go").exists():
            assert time.monotonic() < deadline, "parent never forwarded the first metric"
            time.sleep(0.02)
        f.write('ics": {"loss": 1.5}}\\n')
    (ck / "checkpoint-2").mkdir(parents=True)
    with open(wd / "checkpoints.jsonl", "a") as f:
        f.write(json.dumps({"path": str(ck / "checkpoint-1")}) + "\\n")  # rotated away already
        f.write(json.dumps({"path": str(ck / "checkpoint-2")}) + "\\n")
    if os.environ.get("FAKE_FAIL"):
        sys.stderr.write("\\n".join(f"noise {i}" for i in range(100)) + "\\nthe real cause\\n")
        sys.exit(3)
    res = {"output_dir": "o", "method": "lora", "global_step": 3, "metrics": {"train_loss": 2.0}}
    (wd / "result.json").write_text(json.dumps(res))
    """
)


@pytest.fixture
def fake_worker(tmp_path, monkeypatch):
    script = tmp_path / "fake_worker.py"
    script.write_text(FAKE_WORKER)
    monkeypatch.setenv("FAKE_CKPT", str(tmp_path / "ckpt"))
    monkeypatch.setattr(distributed, "launch_command", lambda wd, *a: [sys.executable, str(script), wd])
    return script


def test_metrics_and_checkpoints_stream_while_the_worker_runs(tmp_path, private_tmp, fake_worker):
    logs: list[tuple[int, dict]] = []

    def log_metrics(m, s):
        logs.append((s, m))
        (wd,) = private_tmp.glob("tuneline-distributed-*")
        (wd / "go").touch()

    seen: list[str] = []
    result = distributed.train_distributed(
        tiny_cfg(),
        tiny_tokenizer(),
        tiny_data(4, validation=0),
        output_dir="o",
        checkpoint_dir=str(tmp_path / "ckpt"),
        run_identity=IDENTITY,
        log_metrics=log_metrics,
        on_checkpoint=seen.append,
        poll_interval=0.05,
        echo=False,
    )
    assert result == TrainResult("o", "lora", 3, {"train_loss": 2.0})
    assert [s for s, _ in logs] == [1, 2, 3]
    assert logs[0][1] == {"loss": 2.5} and logs[1][1]["loss"] != logs[1][1]["loss"], "NaN arrives as NaN"
    assert seen == [str(tmp_path / "ckpt" / "checkpoint-2")]
    assert not list(private_tmp.glob("tuneline-distributed-*")), "work dir removed after success"


def test_crash_reports_stderr_tail_and_keeps_the_work_dir(tmp_path, private_tmp, fake_worker, monkeypatch):
    monkeypatch.setenv("FAKE_FAIL", "1")

    def log_metrics(m, s):
        for wd in private_tmp.glob("tuneline-distributed-*"):
            (wd / "go").touch()

    with pytest.raises(distributed.DistributedTrainingError) as e:
        distributed.train_distributed(
            tiny_cfg(),
            tiny_tokenizer(),
            tiny_data(4, validation=0),
            output_dir="o",
            checkpoint_dir=str(tmp_path / "ckpt"),
            run_identity=IDENTITY,
            log_metrics=log_metrics,
            poll_interval=0.05,
            echo=False,
        )
    msg = str(e.value)
    assert not isinstance(e.value, UserError) and e.value.returncode == 3
    assert "status 3" in msg and "the real cause" in msg and "noise 99" in msg and "noise 0\n" not in msg
    (kept,) = private_tmp.glob("tuneline-distributed-*")
    assert str(kept) in msg and e.value.workdir == str(kept)
    assert (kept / "worker.stderr.log").read_text().startswith("noise 0")


# ---------------------------------------------------------------------------- real worker


def test_user_error_in_the_worker_comes_back_as_the_same_user_error(tmp_path, private_tmp):
    if torch.cuda.is_available():
        pytest.skip("qlora is valid with CUDA")
    with pytest.raises(ConfigError) as e:
        _call(tmp_path, tiny_cfg(method="qlora"), num_processes=1, echo=False)
    msg = str(e.value)
    assert isinstance(e.value, UserError) and e.value.exit_code == 2
    assert "train.method" in msg and "--set train.method=lora" in msg
    assert e.value.problems[0].where == "train.method", "fields rebuilt, not just the text"
    assert "Traceback" in e.value.worker_traceback
    assert not (tmp_path / "out").exists()
    assert not list(private_tmp.glob("tuneline-distributed-*")), (
        "nothing to inspect after a user error: work dir removed"
    )


def test_missing_accelerate_config_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="accelerate_config"):
        _call(tmp_path, tiny_cfg(), accelerate_config=str(tmp_path / "nope.yaml"))


@pytest.mark.slow
def test_two_cpu_ranks_match_one_in_process_rank_with_grad_accum(tmp_path, private_tmp):
    """2 ranks x batch 2 == 1 rank x batch 2 x grad-accum 2: the same samples per optimizer step,
    so per-step losses agree to rel 1e-4 (the tolerance test_resume's DDP test established)."""
    common = {"max_steps": 4, "save_steps": 2, "batch_size": 2, "learning_rate": 1e-3, "lora": {"dropout": 0}}
    data = tiny_data(16, validation=0)

    single_logs: list[tuple[int, dict]] = []
    single = train(
        tiny_cfg(**common, gradient_accumulation_steps=2),
        tiny_tokenizer(),
        data,
        output_dir=str(tmp_path / "single" / "out"),
        checkpoint_dir=str(tmp_path / "single" / "ckpt"),
        run_identity=IDENTITY,
        log_metrics=lambda m, s: single_logs.append((s, dict(m))),
    )

    ckpts: list[str] = []
    ddp_dir = tmp_path / "ddp"
    result, logs = _call(ddp_dir, tiny_cfg(**common), data, num_processes=2, on_checkpoint=ckpts.append)

    assert isinstance(result, TrainResult) and result.global_step == 4 and result.method == "lora"
    out = Path(result.output_dir)
    assert (out / "adapter_model.safetensors").is_file() and (out / "adapter_config.json").is_file()

    steps = [s for s, m in logs if "loss" in m]
    assert steps == [1, 2, 3, 4], "rank 0 alone streams each step once, in order"
    a = {s: m["loss"] for s, m in single_logs if "loss" in m}
    b = {s: m["loss"] for s, m in logs if "loss" in m}
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=1e-4, abs=1e-5), step
    assert result.metrics["train_loss"] == pytest.approx(single.metrics["train_loss"], rel=1e-4)
    assert logs[-1][1]["global_step"] == 4.0 and "tokens_per_second" in logs[-1][1]

    assert str(ddp_dir / "ckpt" / "checkpoint-4") in ckpts
    assert set(ckpts) <= {str(ddp_dir / "ckpt" / f"checkpoint-{s}") for s in (2, 4)}
    manifest = json.loads((ddp_dir / "ckpt" / "checkpoint-4" / "manifest.json").read_text())
    assert {"rng_state_0.pth", "rng_state_1.pth"} <= set(manifest["files"]), "both ranks ran"
    assert not list(private_tmp.glob("tuneline-distributed-*")), "work dir removed after success"


@pytest.mark.slow
def test_divergence_on_two_ranks_is_the_same_nonfinite_loss_error(tmp_path, private_tmp):
    """Every rank raises together; rank 0's error (with its step) is the one that comes back."""
    from tuneline.train.guards import NonFiniteLossError

    cfg = tiny_cfg(method="full", max_steps=6, learning_rate=1e30, max_grad_norm=1e30, warmup_ratio=0)
    seen: list[tuple[int, dict]] = []
    with pytest.raises(NonFiniteLossError) as e:
        distributed.train_distributed(
            cfg,
            tiny_tokenizer(),
            tiny_data(8, validation=0),
            output_dir=str(tmp_path / "out"),
            checkpoint_dir=str(tmp_path / "ckpt"),
            run_identity=IDENTITY,
            log_metrics=lambda m, s: seen.append((s, dict(m))),
            num_processes=2,
            echo=False,
        )
    assert e.value.step <= 3 and f"step {e.value.step}" in str(e.value)
    assert e.value.what in ("loss", "grad_norm")
    # as in-process: the non-finite value reached log_metrics before the error did
    assert seen and seen[-1][0] == e.value.step and not math.isfinite(seen[-1][1][e.value.what])
    assert not (tmp_path / "out" / "tuneline_train.json").exists()
