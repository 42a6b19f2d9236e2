"""P3: user → arm assignment speed. Goals: a scalar call ≤ 1/5 of the GrowthBook Python SDK's
`GrowthBook.run()` measured in the same process, and 1,000,000 users vectorized in ≤ 1 s.

Peer: `growthbook` from PyPI (bench only: `pip install growthbook`, or the project's `bench` extra). Both
sides hash the same ids with the same v2 seed, weights and coverage; the arms are checked to agree, so
the comparison is like for like. The SDK is timed the cheaper of its two usual ways (one instance with
`set_attributes` per user), and once with a new instance per user for comparison. Best of `--repeats`.
Writes its lines into docs/performance.md (section `p3_assignment`).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
from timing import Report, best_of, write_section  # bench/timing.py

from finetune_assets.experiments.runtime.assignment import assign_many, assign_variant

SALT = "exp-2026-01-04-a1b2c3:1"
SPLIT, COVERAGE = 0.5, 0.8


def best_per_call(run: Callable[[], int], calls: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        best = min(best, (time.perf_counter() - started) / calls)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=100_000, help="scalar calls per timing (default 100,000)")
    parser.add_argument("--users", type=int, default=1_000_000, help="users for the vectorized run")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    out = Report()

    try:
        from growthbook import Experiment, GrowthBook
    except ImportError as exc:  # pragma: no cover - a bench-only dependency
        raise SystemExit("P3 needs the GrowthBook SDK as its peer: pip install growthbook") from exc

    ids = [str(i) for i in range(args.calls)]
    experiment = Experiment(
        key="exp", variations=[0, 1], weights=[1 - SPLIT, SPLIT], coverage=COVERAGE, hashVersion=2, seed=SALT
    )
    shared = GrowthBook(attributes={"id": ids[0]})

    def ours() -> int:
        enrolled = 0
        for user in ids:
            enrolled += assign_variant(user, SALT, split=SPLIT, coverage=COVERAGE) is not None
        return enrolled

    def sdk_shared() -> int:
        enrolled = 0
        for user in ids:
            shared.set_attributes({"id": user})
            enrolled += shared.run(experiment).inExperiment
        return enrolled

    def sdk_new_instance() -> int:
        enrolled = 0
        for user in ids[: args.calls // 4]:
            enrolled += GrowthBook(attributes={"id": user}).run(experiment).inExperiment
        return enrolled

    # Like for like: the same arm for every id (and so the same work).
    codes = {"control": 0, "treatment": 1, None: -1}
    mismatches = 0
    for user in ids[:20_000]:
        shared.set_attributes({"id": user})
        result = shared.run(experiment)
        theirs = result.variationId if result.inExperiment else -1
        mismatches += theirs != codes[assign_variant(user, SALT, split=SPLIT, coverage=COVERAGE)]
    out(f"agreement with the GrowthBook SDK on {min(20_000, len(ids)):,} ids: {mismatches} mismatches")

    t_ours = best_per_call(ours, len(ids), args.repeats)
    t_sdk = best_per_call(sdk_shared, len(ids), args.repeats)
    t_sdk_new = best_per_call(sdk_new_instance, args.calls // 4, args.repeats)
    ratio = t_ours / t_sdk
    out(f"assign_variant:                     {t_ours * 1e6:7.2f} µs/call (best of {args.repeats} x {len(ids):,})")
    out(f"GrowthBook.run() (set_attributes):  {t_sdk * 1e6:7.2f} µs/call")
    out(f"GrowthBook(...) + run() per user:   {t_sdk_new * 1e6:7.2f} µs/call")
    verdict = "OK" if ratio <= 0.2 else "MISSED"
    out(f"ratio ours / SDK run(): {ratio:.3f} (goal <= 0.2): {verdict}; {1 / ratio:.1f}x faster")

    n = args.users
    as_list = list(range(n))
    as_strings = [str(i) for i in as_list]
    as_array = np.arange(n, dtype=np.int64)
    inputs: dict[str, list[int] | list[str] | np.ndarray] = {
        "int64 array": as_array,
        "list of int": as_list,
        "list of str": as_strings,
    }
    for label, users in inputs.items():

        def vectorized(users: list[int] | list[str] | np.ndarray = users) -> object:
            return assign_many(users, SALT, split=SPLIT, coverage=COVERAGE)

        seconds = best_of(vectorized, args.repeats)
        verdict = "OK" if seconds <= 1.0 else "MISSED"
        out(f"assign_many, {n:,} users as {label:<11}: {seconds:.3f} s (goal <= 1 s): {verdict}")
    arms = assign_many(as_array, SALT, split=SPLIT, coverage=COVERAGE)
    out(
        f"  shares: control {np.mean(arms == 0):.4f}, treatment {np.mean(arms == 1):.4f}, "
        f"not enrolled {np.mean(arms == -1):.4f} (configured {COVERAGE * (1 - SPLIT):.2f}/{COVERAGE * SPLIT:.2f})"
    )
    write_section("p3_assignment", out.lines)


if __name__ == "__main__":
    main()
