"""What every bench script measures with: the median of alternating, warmed-up runs."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


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
