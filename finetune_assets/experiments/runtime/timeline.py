"""The experiment as it stood after each day of its window: cumulative relative lift and its interval.

A picture for people (`ab_test_outcome`'s `lift_plot`), not a decision rule: the decision reads the test once
at the end. Each point is computed from cumulative per-user sums (`PlatformStore.arm_totals(..., until=...)`,
aggregated in SQL) with the same delta-method estimator as the decision (`statistics.relative_lift`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from finetune_assets.experiments.stats.statistics import ArmSums, relative_lift


@dataclass(frozen=True)
class LiftPoint:
    hours: float
    """Hours since the experiment started (the point covers the posts created before then)."""
    lift: float
    ci_low: float
    ci_high: float
    users_control: int
    users_treatment: int


def daily_cutoffs(started_at: datetime, ends_at: datetime, step_hours: float = 24.0) -> list[datetime]:
    """started + step, started + 2·step, … strictly before `ends_at`, then `ends_at` itself."""
    if ends_at <= started_at:
        raise ValueError(f"ends_at {ends_at.isoformat()} is not after started_at {started_at.isoformat()}")
    if step_hours <= 0:
        raise ValueError(f"step_hours = {step_hours}: expected a positive number of hours")
    step = timedelta(hours=step_hours)
    cutoffs = []
    cutoff = started_at + step
    while cutoff < ends_at:
        cutoffs.append(cutoff)
        cutoff += step
    return [*cutoffs, ends_at]


def lift_timeline(
    started_at: datetime,
    cutoffs: Iterable[datetime],
    sums_until: Callable[[datetime], tuple[ArmSums, ArmSums]],
    *,
    alpha: float,
) -> list[LiftPoint]:
    """One point per cutoff where the lift is defined (≥ 2 users per arm and control engagements)."""
    points = []
    for cutoff in cutoffs:
        control, treatment = sums_until(cutoff)
        if control.n < 2 or treatment.n < 2 or control.sum_d <= 0 or treatment.sum_d <= 0 or control.sum_m <= 0:
            continue
        estimate = relative_lift(control, treatment, alpha=alpha)
        points.append(
            LiftPoint(
                hours=(cutoff - started_at).total_seconds() / 3600,
                lift=estimate.lift,
                ci_low=estimate.ci_low,
                ci_high=estimate.ci_high,
                users_control=control.n,
                users_treatment=treatment.n,
            )
        )
    return points
