"""Definitions load time (goal ≤ 3 s) and which heavy modules it pulls in (goal: none), over 5 cold starts.

Peer in the same run: a bare `import dagster`, the floor any code location pays. Writes its lines into
docs/performance.md (section `definitions_load`).
"""

from __future__ import annotations

import statistics
import subprocess
import sys

from timing import Report, write_section  # bench/timing.py

HEAVY = ("torch", "transformers", "trl", "peft", "mlflow", "openai", "tiktoken", "redis")
LOAD = (
    "import sys, time; t = time.perf_counter(); from finetune_assets.definitions import defs; "
    f"heavy = [m for m in {HEAVY!r} if m in sys.modules]; "
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
    out = Report()
    load, heavy = cold(LOAD)
    bare, _ = cold(BARE)
    verdict = "OK" if load <= 3 else "MISSED"
    out(f"definitions load: median {load:.2f} s over 5 cold starts (goal <= 3 s): {verdict}")
    out(f"bare `import dagster`: median {bare:.2f} s; our code adds {load - bare:.2f} s ({load / bare:.2f}x)")
    out(f"heavy modules imported at load ({', '.join(HEAVY)}): {heavy or 'none'}")
    write_section("definitions_load", out.lines)


if __name__ == "__main__":
    main()
