"""Definitions load time (goal ≤ 3 s) and which heavy modules it pulls in (goal: none), over 5 cold starts.

Peer in the same run: a bare `import dagster`, the floor any code location pays.
"""

from __future__ import annotations

import statistics
import subprocess
import sys

LOAD = (
    "import sys, time; t = time.perf_counter(); from finetune_assets.definitions import defs; "
    "heavy = [m for m in ('torch', 'transformers', 'peft', 'mlflow') if m in sys.modules]; "
    "print(time.perf_counter() - t, ','.join(heavy))"
)
BARE = "import time; t = time.perf_counter(); import dagster; print(time.perf_counter() - t, '')"


def cold(code: str, runs: int = 5) -> tuple[float, str]:
    times, heavy = [], ""
    for _ in range(runs):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
        times.append(float(out[0]))
        heavy = out[1] if len(out) > 1 else ""
    return statistics.median(times), heavy


def main() -> None:
    load, heavy = cold(LOAD)
    bare, _ = cold(BARE)
    print(f"definitions load: median {load:.2f} s over 5 cold starts (goal <= 3 s)")
    print(f"bare `import dagster`: median {bare:.2f} s; our code adds {load - bare:.2f} s ({load / bare:.2f}x)")
    print(f"heavy modules imported at load: {heavy or 'none'}")


if __name__ == "__main__":
    main()
