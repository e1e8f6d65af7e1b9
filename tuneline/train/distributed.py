"""Multi-process (DDP / FSDP / DeepSpeed) training from inside one Python process.

`train()` is already rank-aware, but it has to be *started* once per rank by a launcher.
ZenML's `run_with_accelerate` would do that by re-running the step with its inputs as CLI
strings, which our artifact inputs (TokenizedDataset, RecordSet, a prepared tokenizer)
cannot be. So the step stays an ordinary in-process step and this module does the launch:
it writes the inputs to a private work directory, starts `tuneline.train.distributed_worker`
under `accelerate launch` (GPUs) or torchrun (CPU/gloo), and turns the worker's files back
into what an in-process `train()` call gives: live `log_metrics` calls (so MLflow shows the
loss while it trains), `on_checkpoint` calls, a `TrainResult`, and the worker's own
UserError (same type and message) when the user has something to fix.
"""

from __future__ import annotations

import collections
import importlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from tuneline.errors import ConfigError, Problem, TunelineError, UserError
from tuneline.train import distributed_worker as w
from tuneline.train.recipe import LogMetrics, TrainResult

if TYPE_CHECKING:
    from tuneline.config import ProjectConfig
    from tuneline.data.records import RecordSet
    from tuneline.tokenize.tokenized import TokenizedDataset

logger = logging.getLogger(__name__)

STDERR_TAIL_LINES = 60


class DistributedTrainingError(TunelineError):
    """The worker processes failed for a reason that is not the user's input (crash, OOM kill,
    NCCL/gloo failure). The message carries the tail of their stderr and the kept work dir."""

    def __init__(self, message: str, workdir: str | None = None, returncode: int | None = None):
        self.workdir = workdir
        self.returncode = returncode
        super().__init__(message)


class WorkerUserError(UserError):
    """A UserError from the worker whose exact type could not be rebuilt here; same message."""

    def __init__(self, message: str, error_type: str = ""):
        self.error_type = error_type
        super().__init__(message)


# ---------------------------------------------------------------------------- launch command


def default_num_processes() -> int:
    import torch

    return torch.cuda.device_count() or 1


def _free_port() -> int:
    """Several runs (or test sessions) may share a machine; the default 29500 would collide."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch_command(workdir: str, num_processes: int, accelerate_config: str | None, cuda: bool) -> list[str]:
    """The command that starts one worker per rank.

    - GPUs, or any accelerate config file (FSDP/DeepSpeed settings live there):
      `accelerate launch`, which applies the config and picks the backend.
    - CPU with several processes: torchrun. `accelerate launch --cpu --num_processes N`
      starts a single process (its multi-CPU path needs an mpirun hostfile), so it cannot
      be used for CPU DDP.
    - One process, no config: the worker directly; a launcher would only add start-up time.
    Only the work dir is on the command line: secrets stay in the (inherited) environment.
    """
    worker = ["-m", "tuneline.train.distributed_worker", workdir]
    if accelerate_config or (cuda and num_processes > 1):
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(num_processes)]
        if accelerate_config:
            cmd += ["--config_file", accelerate_config]
        elif num_processes > 1:
            cmd += ["--multi_gpu"]
        if num_processes > 1:
            cmd += ["--main_process_port", str(_free_port())]
        return [*cmd, *worker]
    if num_processes > 1:
        return [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(num_processes),
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(_free_port()),
            *worker,
        ]
    return [sys.executable, *worker]


def _worker_env() -> dict[str, str]:
    """The caller's environment (HF tokens, MLflow/cloud credentials, HF_HUB_OFFLINE...), plus
    the directory tuneline is imported from, so the worker runs this very code even when it
    is not installed in the interpreter's site-packages."""
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[2])  # the directory holding the tuneline package
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"  # worker logs arrive as they are written, not at exit
    return env


# ---------------------------------------------------------------------------- streaming


class _Lines:
    """Whole new lines of a file another process appends to (a partial last line waits)."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = 0

    def new(self) -> list[dict[str, Any]]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except FileNotFoundError:
            return []
        end = chunk.rfind(b"\n")
        if end < 0:
            return []
        self.offset += end + 1
        out = []
        for line in chunk[: end + 1].splitlines():
            if line.strip():
                out.append(json.loads(line))
        return out


def _pump(stream: IO[bytes], sink: IO[str] | None, log: IO[bytes], tail: collections.deque | None) -> None:
    """Copy a worker pipe to the caller's stream (ZenML captures it into the step log), to a
    log file in the work dir, and keep the last lines for the error message."""
    for raw in iter(stream.readline, b""):
        try:
            log.write(raw)
            log.flush()
        except (OSError, ValueError):
            pass  # the log closed after the supervisor stopped the run; the pipe still needs draining
        line = raw.decode("utf-8", errors="replace")
        if tail is not None:
            tail.append(line.rstrip("\n"))
        if sink is not None:
            try:
                sink.write(line)
                sink.flush()
            except (OSError, ValueError):
                sink = None  # the caller closed its stream; keep draining so the worker never blocks
    stream.close()


def _stop(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """Stop the launcher and every rank it started (they share the new session we made)."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


# ---------------------------------------------------------------------------- errors


def _read_errors(workdir: Path) -> list[dict[str, Any]]:
    """Rank 0's error first, then the other ranks'."""
    found = []
    for p in sorted(workdir.glob("error*.json"), key=lambda p: (p.name != w.ERROR, p.name)):
        try:
            found.append(json.loads(p.read_text()))
        except (OSError, ValueError):
            continue
    return found


def _rebuild_user_error(record: dict[str, Any]) -> UserError:
    """The worker's UserError as the same class with the same message and fields, so callers
    (and tests) that catch ConfigError / NonFiniteLossError / ResumeMismatchError keep working.
    Only tuneline's own classes are imported; anything else becomes a WorkerUserError."""
    qualname = record.get("type", "")
    message = record.get("message", "")
    module, _, name = qualname.rpartition(".")
    cls: Any = None
    if module == "tuneline" or module.startswith("tuneline."):
        try:
            cls = getattr(importlib.import_module(module), name, None)
        except ImportError:
            cls = None
    if not (isinstance(cls, type) and issubclass(cls, UserError)):
        return WorkerUserError(message, qualname)
    err = cls.__new__(cls)
    Exception.__init__(err, message)  # the message exactly as the worker formatted it
    for k, v in (record.get("attrs") or {}).items():
        if k == "problems" and isinstance(v, list):
            v = [Problem(**p) if isinstance(p, dict) else p for p in v]
        elif k == "checkpoint" and isinstance(v, str):
            v = Path(v)
        try:
            setattr(err, k, v)
        except AttributeError:
            continue
    err.worker_traceback = record.get("traceback", "")  # type: ignore[attr-defined]
    return err


def _failure(workdir: Path, returncode: int, tail: collections.deque, cmd: list[str]) -> Exception:
    errors = _read_errors(workdir)
    for record in errors:
        if record.get("user_error"):
            return _rebuild_user_error(record)
    lines = [f"distributed training failed: `{' '.join(cmd[1:4])} ...` exited with status {returncode}"]
    if errors:
        e = errors[0]
        lines.append(f"rank {e.get('rank', '?')} raised {e.get('type')}: {e.get('message')}")
    elif returncode < 0:
        lines.append(f"killed by signal {-returncode} (out of memory?)")
    lines.append(f"--- last {len(tail)} lines of the workers' stderr ---")
    lines += list(tail)
    lines.append(f"--- work dir kept for inspection (logs, inputs): {workdir} ---")
    return DistributedTrainingError("\n".join(lines), str(workdir), returncode)


# ---------------------------------------------------------------------------- train_distributed


def train_distributed(
    cfg: ProjectConfig,
    tokenizer: Any,
    data: TokenizedDataset | RecordSet,
    *,
    output_dir: str,
    checkpoint_dir: str,
    run_identity: dict[str, Any],
    log_metrics: LogMetrics | None = None,
    num_processes: int | None = None,
    accelerate_config: str | None = None,
    on_checkpoint: Callable[[str], None] | None = None,
    poll_interval: float = 0.5,
    echo: bool = True,
) -> TrainResult:
    """`train()` on `num_processes` ranks in worker processes; same arguments, same result.

    num_processes / accelerate_config default to `cfg.train.resources`, then to one process
    per visible GPU (1 on CPU). `log_metrics` is called from this thread as rank 0 logs, at
    most `poll_interval` seconds late. `on_checkpoint` is best effort: it runs while the
    worker trains on, so a hook slower than `save_steps` of training can find its checkpoint
    rotated away (that is logged and skipped). `echo` copies the workers' stdout/stderr to
    ours. The work dir (a copy of the inputs) is removed unless the workers crashed; the
    error then names it.

    Raises the worker's UserError (same class and message) for anything the user can fix,
    DistributedTrainingError for everything else.
    """
    import torch

    res = cfg.train.resources
    if num_processes is None:
        num_processes = res.num_processes if res.num_processes is not None else default_num_processes()
    if num_processes < 1:
        raise ConfigError([Problem("train.resources.num_processes", f"must be >= 1, got {num_processes}")])
    accelerate_config = accelerate_config or res.accelerate_config
    if accelerate_config:
        accelerate_config = cfg.resolve_path(accelerate_config)
        if not Path(accelerate_config).is_file():
            raise ConfigError(
                [
                    Problem(
                        "train.resources.accelerate_config",
                        f"accelerate config file '{accelerate_config}' not found (write one with `accelerate config`)",
                    )
                ]
            )

    workdir = Path(tempfile.mkdtemp(prefix="tuneline-distributed-"))
    ok = False
    try:
        _write_inputs(workdir, cfg, tokenizer, data, output_dir, checkpoint_dir, run_identity)
        cmd = launch_command(str(workdir), num_processes, accelerate_config, torch.cuda.is_available())
        logger.info("launching %d training process(es): %s", num_processes, " ".join(cmd))
        result = _supervise(cmd, workdir, log_metrics, on_checkpoint, poll_interval, echo)
        ok = True
        return result
    except UserError:
        ok = True  # the message says what to fix; a copy of the inputs would only fill /tmp
        raise
    finally:
        if ok:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            logger.error("distributed training failed; work dir kept at %s", workdir)


def _write_inputs(
    workdir: Path,
    cfg: ProjectConfig,
    tokenizer: Any,
    data: Any,
    output_dir: str,
    checkpoint_dir: str,
    run_identity: dict[str, Any],
) -> None:
    (workdir / w.CONFIG).write_text(json.dumps(cfg.model_dump(mode="json")))
    tokenizer.save_pretrained(str(workdir / w.TOKENIZER))
    w.save_data(data, workdir / w.DATA)
    args = {
        "output_dir": output_dir,
        "checkpoint_dir": checkpoint_dir,
        "run_identity": run_identity,
        # save_pretrained drops it: which tokens prepare_tokenizer added (their rows get trained)
        "tokenizer_prep": getattr(tokenizer, "tuneline_prep", None),
    }
    (workdir / w.ARGS).write_text(json.dumps(args, default=str))


def _supervise(
    cmd: list[str],
    workdir: Path,
    log_metrics: LogMetrics | None,
    on_checkpoint: Callable[[str], None] | None,
    poll_interval: float,
    echo: bool,
) -> TrainResult:
    tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
    metrics, ckpts = _Lines(workdir / w.METRICS), _Lines(workdir / w.CHECKPOINTS)
    with (
        open(workdir / "worker.stdout.log", "wb") as out_log,
        open(workdir / "worker.stderr.log", "wb") as err_log,
    ):
        proc = subprocess.Popen(
            cmd,
            env=_worker_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # one process group: _stop() reaches every rank
        )
        pumps = [
            threading.Thread(
                target=_pump, args=(proc.stdout, sys.stdout if echo else None, out_log, None), daemon=True
            ),
            threading.Thread(
                target=_pump, args=(proc.stderr, sys.stderr if echo else None, err_log, tail), daemon=True
            ),
        ]
        for t in pumps:
            t.start()

        def forward() -> None:
            for rec in metrics.new():
                if log_metrics is not None:
                    log_metrics(rec["metrics"], int(rec["step"]))
            for rec in ckpts.new():
                _checkpoint_event(rec["path"], on_checkpoint)

        try:
            while proc.poll() is None:
                forward()
                time.sleep(poll_interval)
            for t in pumps:
                t.join(timeout=30)
            forward()  # whatever was written between the last poll and the exit
        except BaseException:
            # A failing callback or Ctrl-C here must not leave ranks training unattended.
            _stop(proc)
            for t in pumps:
                t.join(timeout=5)
            raise
    if proc.returncode != 0:
        raise _failure(workdir, proc.returncode, tail, cmd)
    result_file = workdir / w.RESULT
    if not result_file.is_file():
        raise DistributedTrainingError(
            f"the training workers exited cleanly but wrote no {w.RESULT}; work dir kept at {workdir}",
            str(workdir),
            0,
        )
    return TrainResult(**json.loads(result_file.read_text()))


def _checkpoint_event(path: str, on_checkpoint: Callable[[str], None] | None) -> None:
    """In-process, on_checkpoint runs before training continues; here the worker has moved on,
    so the next rotation may already have removed this checkpoint. That is skipped (the newer
    one follows); any other failure stops the run, as it would in-process."""
    if on_checkpoint is None:
        return
    if not Path(path).is_dir():
        logger.warning("checkpoint %s was rotated away before on_checkpoint could see it; skipped", path)
        return
    try:
        on_checkpoint(path)
    except Exception:
        if not Path(path).is_dir():
            logger.warning("checkpoint %s was rotated away while on_checkpoint ran; skipped", path)
            return
        raise
