"""`finetune-assets demo` end to end on this machine (goal ≤ 180 s on 2 cores, after install).

Runs the demo in a fresh state directory and Dagster home, prints its wall time and the per-step timings
the demo reports, and the share of the budget used. Writes its lines into docs/performance.md (section
`demo_end_to_end`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from timing import Report, write_section  # bench/timing.py

BUDGET_S = 180.0


def main() -> None:
    out = Report()
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            **os.environ,
            "FINETUNE_STATE_DIR": str(Path(tmp) / "state"),
            "DAGSTER_HOME": str(Path(tmp) / "dagster_home"),
        }
        Path(env["DAGSTER_HOME"]).mkdir()
        base_model = "built from scratch in the fresh state directory"
        if len(sys.argv) > 1 and sys.argv[1] == "--warm-base-model":
            cached = Path(".state/base_models")
            if cached.is_dir():
                (Path(tmp) / "state").mkdir()
                subprocess.run(["cp", "-r", str(cached), str(Path(tmp) / "state" / "base_models")], check=True)
                base_model = f"copied from {cached} (--warm-base-model)"
        out(f"finetune-assets demo in a fresh state directory and Dagster home; base model {base_model}")
        started = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-m", "finetune_assets.cli", "demo"], env=env, capture_output=True, text=True
        )
        wall = time.perf_counter() - started
    timings = [line for line in result.stdout.splitlines() if line.startswith("Timings")]
    verdict = "OK" if result.returncode == 0 and wall <= BUDGET_S else "MISSED"
    out(
        f"demo exit code {result.returncode}; wall {wall:.1f} s = {wall / BUDGET_S:.0%} of the {BUDGET_S:.0f} s "
        f"budget: {verdict}"
    )
    out(timings[0] if timings else result.stdout[-2000:] + result.stderr[-2000:])
    if result.returncode == 0:
        write_section("demo_end_to_end", out.lines)


if __name__ == "__main__":
    main()
