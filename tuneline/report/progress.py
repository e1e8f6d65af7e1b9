"""One compact line per phase of long work, instead of raw dicts and a progress bar per checkpoint.

    train  120/400 [30%] loss 1.234 lr 1.9e-03 1,850 tok/s ETA 1m12s
    eval generate  24/48 prompts [50%] 3.1 prompts/s ETA 8s

On a terminal the line is rewritten in place (carriage return), at most once per
`min_interval` seconds. Written to a file or a pipe (CI logs, `make run | tee`), where a
carriage return would leave hundreds of fragments, it prints one line each time another
`every` of the work is done, and always the last one. The stream is looked up at every write,
so whatever wraps sys.stderr at that moment (ZenML's step logs, pytest) sees the lines.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from typing import TextIO


def format_duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class ProgressLine:
    """The progress of one phase (`label`): `update(done, detail)` as it goes, `finish(detail)` once."""

    def __init__(
        self,
        label: str,
        total: int | None,
        *,
        unit: str = "",
        show_rate: bool = False,
        initial: int = 0,
        every: float = 0.1,
        min_interval: float = 1.0,
        stream: TextIO | None = None,
        tty: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.label = label
        self.total = total if total and total > 0 else None
        self.unit = unit
        self.show_rate = show_rate  # "3.1 <unit>/s" after the count
        self.initial = initial  # work done before this process started (a resumed run)
        self.every = every
        self.min_interval = min_interval
        self._stream = stream
        self._tty = tty
        self.clock = clock
        self.started = clock()
        self.done = initial
        self.detail = ""
        self._last_write: float | None = None
        self._mark = self._mark_of(initial)  # the last `every` step that was printed (non-tty)
        self._finished = False
        self._width = 0

    @property
    def stream(self) -> TextIO:
        return self._stream if self._stream is not None else sys.stderr

    @property
    def tty(self) -> bool:
        if self._tty is None:
            isatty = getattr(self.stream, "isatty", None)
            try:
                self._tty = bool(isatty and isatty())
            except (ValueError, OSError):  # a closed or detached stream
                self._tty = False
        return self._tty

    def eta(self) -> float | None:
        """Seconds left at the rate of this process so far (work resumed from earlier not counted)."""
        if self.total is None:
            return None
        new = self.done - self.initial
        if new <= 0:
            return None
        return (self.clock() - self.started) / new * max(self.total - self.done, 0)

    def rate(self) -> float | None:
        """Units per second in this process so far."""
        elapsed = self.clock() - self.started
        new = self.done - self.initial
        return new / elapsed if elapsed > 0 and new > 0 else None

    def render(self, final: bool = False) -> str:
        parts = [self.label, ""]  # two spaces between the label and the count
        count = f"{self.done}/{self.total}" if self.total is not None else str(self.done)
        if self.unit:
            count += f" {self.unit}"
        if self.total is not None:
            count += f" [{min(100, int(100 * self.done / self.total))}%]"
        parts.append(count)
        rate = self.rate() if self.show_rate else None
        if rate is not None:
            parts.append(f"{rate:,.1f} {self.unit or 'items'}/s")
        if self.detail:
            parts.append(self.detail)
        if final:
            parts.append(f"done in {format_duration(self.clock() - self.started)}")
        else:
            eta = self.eta()
            if eta is not None:
                parts.append(f"ETA {format_duration(eta)}")
        return " ".join(parts)

    def wants_update(self, done: int) -> bool:
        """Whether `update(done)` would write now: callers with a costly detail (a device sync)
        build it only then."""
        if self._finished:
            return False
        if self.total is not None and done >= self.total:
            return False  # the last line is finish()'s, with the time it took
        if self.tty:
            return self._last_write is None or self.clock() - self._last_write >= self.min_interval
        return self.total is not None and self._mark_of(done) > self._mark

    def _mark_of(self, done: int) -> int:
        """How many whole `every` fractions of the total `done` covers (1e-9: 0.3 is 3 tenths)."""
        if self.total is None or self.every <= 0:
            return 0
        return math.floor(done / self.total / self.every + 1e-9)

    def update(self, done: int, detail: str | None = None) -> None:
        if self._finished:
            return
        due = self.wants_update(done)
        self.done = done
        if detail is not None:
            self.detail = detail
        if not due:
            return
        if self.tty:
            self._write_in_place(self.render())
            self._last_write = self.clock()
            return
        self._mark = self._mark_of(done)
        self._write(self.render() + "\n")

    def finish(self, detail: str | None = None, done: int | None = None) -> None:
        """The phase's last line, with how long it took; later calls do nothing."""
        if self._finished:
            return
        self._finished = True
        if done is not None:
            self.done = done
        if detail is not None:
            self.detail = detail
        line = self.render(final=True)
        if self.tty:
            self._write_in_place(line, end="\n")
        else:
            self._write(line + "\n")

    def _write_in_place(self, line: str, end: str = "") -> None:
        pad = " " * max(self._width - len(line), 0)  # erase what a longer earlier line left
        self._width = len(line)
        self._write(f"\r{line}{pad}{end}")

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (ValueError, OSError):  # a closed stream must not fail the work it reports on
            pass


def quiet_library_progress() -> None:
    """Silence the progress bars transformers draws for its own work ("Writing model shards" at
    every checkpoint, "Loading weights" at every model load): ours say more in one line. Hub
    download bars are huggingface_hub's and stay, so a long first download still shows."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_tqdm_hook(_disabled_bar)


def _disabled_bar(factory: Callable[..., object], args: tuple, kwargs: dict) -> object:
    return factory(*args, **{**kwargs, "disable": True})
