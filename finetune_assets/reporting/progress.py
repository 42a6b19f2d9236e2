"""Progress of long work (training steps, job polling, traffic simulation), for the run log and the terminal.

Long steps report through a `reporter(...)`: every line goes to the run's log (`context.log.info`, shown in the
Dagster UI) and to the `finetune_assets.reporting.progress` Python logger. That logger prints nothing by itself (it does
not propagate); `to_terminal()` attaches a handler for a while, which is how `finetune-assets demo` shows
training progress while keeping the rest of Dagster's console output quiet.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

PROGRESS_LOGGER = "finetune_assets.reporting.progress"
_logger = logging.getLogger(PROGRESS_LOGGER)
_logger.propagate = False
_logger.addHandler(logging.NullHandler())
_logger.setLevel(logging.INFO)

Say = Callable[[str], None]


def reporter(log: Say | None = None) -> Say:
    """A progress callback: `log` (e.g. `context.log.info`) plus the progress logger."""

    def say(line: str) -> None:
        if log is not None:
            log(line)
        _logger.info(line)

    return say


@contextmanager
def to_terminal(stream: TextIO | None = None, prefix: str = "    ") -> Iterator[None]:
    """Print progress lines to `stream` (default stdout) while the block runs."""
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(logging.Formatter(prefix + "%(message)s"))
    _logger.addHandler(handler)
    try:
        yield
    finally:
        _logger.removeHandler(handler)
        handler.flush()


def format_duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class Counter:
    """`done/total` with elapsed time and an ETA from the average rate so far."""

    def __init__(self, total: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.total = total
        self.done = 0
        self._clock = clock
        self._started = clock()

    def advance(self, n: int = 1, what: str = "") -> str:
        self.done += n
        return self.line(what)

    def line(self, what: str = "") -> str:
        """`done/total what (share, elapsed, ETA)`, e.g. `256/1139 posts written (22%, 5s elapsed, ETA 19s)`."""
        elapsed = self._clock() - self._started
        count = f"{self.done}/{self.total}" + (f" {what}" if what else "")
        if self.done <= 0:
            return f"{count} ({format_duration(elapsed)})"
        eta = elapsed / self.done * max(self.total - self.done, 0)
        share = self.done / self.total if self.total else 1.0
        return f"{count} ({share:.0%}, {format_duration(elapsed)} elapsed, ETA {format_duration(eta)})"
