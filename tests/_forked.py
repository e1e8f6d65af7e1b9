"""`python tests/_train_script.py ARGV` as a child process forked from the test process.

The tests that kill a training run, or run one beside another, need it in a process of its
own; a fresh interpreter spends seconds importing torch, transformers and peft before its
first step, a fork of the test process (which has imported them) none. The child is a real
process: its own memory and pid, killed by a real SIGKILL, writing only through the files
its arguments name. It pins torch to one thread before any work (`main()` does), the usual
condition for running torch in a forked child, as DataLoader workers do.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from pathlib import Path


def _child(argv: list[str], log: str) -> None:
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.stdout = open(1, "w", buffering=1, closefd=False)
    sys.stderr = open(2, "w", buffering=1, closefd=False)
    from tests._train_script import main

    sys.exit(main(argv))


def start(argv: list[str], log: Path) -> multiprocessing.Process:
    """Start the script's `main(argv)` in a forked child, its stdout and stderr going to `log`.
    `exitcode` is -9 after a SIGKILL (`kill()`), as `returncode` is for a subprocess."""
    proc = multiprocessing.get_context("fork").Process(target=_child, args=(list(argv), str(log)))
    proc.start()
    return proc


def tail(log: Path, n: int = 3000) -> str:
    return log.read_text(errors="replace")[-n:] if log.exists() else "(no output)"
