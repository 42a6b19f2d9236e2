"""What every bench script measures with (the median of alternating, warmed-up runs), and how it writes what it
printed into docs/performance.md, so the published figures are always a script's own output."""

from __future__ import annotations

import os
import platform
import re
import statistics
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from finetune_assets.errors import FinetuneAssetsError

PERFORMANCE_MD = Path(__file__).resolve().parent.parent / "docs" / "performance.md"
_NAME = re.compile(r"[a-z0-9_-]+")


def timed(runs: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds per run: one warm-up each, then `repeats` rounds, alternating (same cache state)."""
    for run in runs.values():
        run()
    timings: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            started = time.perf_counter()
            run()
            timings[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in timings.items()}


def best_of(run: Callable[[], object], repeats: int) -> float:
    """Fastest of `repeats` runs, in seconds: for throughput against a peer measured the same way."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best


def machine() -> str:
    """The line every bench prints first: figures mean little without the machine and its load."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        models = [
            line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")
        ]
        cpu = models[0] if models else cpu
    load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    return (
        f"machine: {cores} cores ({cpu}), Python {platform.python_version()}{load}, "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    )


class BenchSectionError(FinetuneAssetsError, ValueError):
    """A bench section name that cannot be a marker, or markers in docs/performance.md that do not pair up."""


class Report:
    """Prints each line and keeps it, so the lines written to docs/performance.md are the ones printed."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self(machine())

    def __call__(self, text: str = "") -> None:
        print(text, flush=True)
        self.lines.extend(text.splitlines() or [""])


def write_section(name: str, lines: Sequence[str], path: Path = PERFORMANCE_MD) -> None:
    """Replace the text between `<!-- bench:NAME -->` and `<!-- /bench:NAME -->` in `path` with `lines` (a text
    block); append the section when the markers are missing. Everything outside the markers is left as it is."""
    if not _NAME.fullmatch(name):
        raise BenchSectionError(f"bench section name {name!r}: use lower-case letters, digits, '_' and '-'")
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    body = "\n".join([start, "```text", *(line.rstrip() for line in lines), "```", end])
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    at, until = text.find(start), text.find(end)
    if at >= 0 and until > at:
        text = text[:at] + body + text[until + len(end) :]
    elif at >= 0 or until >= 0:
        raise BenchSectionError(f"{path}: the markers of bench section {name!r} are not a {start} ... {end} pair")
    else:
        text = (text.rstrip("\n") + "\n\n" if text.strip() else "") + body + "\n"
    path.write_text(text, encoding="utf-8")
