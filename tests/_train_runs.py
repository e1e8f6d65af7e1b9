"""Running `python tests/_train_script.py ARGV` without starting a new interpreter.

A fresh interpreter spends seconds importing torch, transformers and peft before the first
step. `in_process` calls the script's `main(argv)` here; `forked` runs it in a child forked
from this process (which has imported them) for tests that kill a run or run one beside
another: a real process, its own memory and pid, killed by a real SIGKILL, writing only
through the files its arguments name. `main()` pins torch to one thread before any work, so
every run computes bit for bit the same wherever it runs, and torch in a forked child is safe
(the condition DataLoader workers run under).
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from pathlib import Path


def in_process(argv: list[str]) -> None:
    """The script's `main(argv)` in this process; torch's thread count is restored after."""
    import torch

    from tests._train_script import main

    threads = torch.get_num_threads()
    try:
        assert main(list(argv)) == 0
    finally:
        torch.set_num_threads(threads)


def _child(argv: list[str], log: str) -> None:
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.stdout = open(1, "w", buffering=1, closefd=False)
    sys.stderr = open(2, "w", buffering=1, closefd=False)
    from tests._train_script import main

    sys.exit(main(argv))


def forked(argv: list[str], log: Path) -> multiprocessing.Process:
    """Start the script's `main(argv)` in a forked child, its stdout and stderr going to `log`.
    `exitcode` is -9 after a SIGKILL (`kill()`), as `returncode` is for a subprocess."""
    proc = multiprocessing.get_context("fork").Process(target=_child, args=(list(argv), str(log)))
    proc.start()
    return proc


def tail(log: Path, n: int = 3000) -> str:
    return log.read_text(errors="replace")[-n:] if log.exists() else "(no output)"
