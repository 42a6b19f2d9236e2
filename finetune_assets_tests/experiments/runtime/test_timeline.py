from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from finetune_assets.experiments.runtime.timeline import daily_cutoffs, lift_timeline
from finetune_assets.experiments.stats.statistics import ArmSums, relative_lift

START = datetime(2026, 11, 25, 12, tzinfo=UTC)


def test_daily_cutoffs_cover_the_window_and_end_at_its_end() -> None:
    cutoffs = daily_cutoffs(START, START + timedelta(hours=168))
    assert [(c - START).total_seconds() / 3600 for c in cutoffs] == [24, 48, 72, 96, 120, 144, 168]
    assert daily_cutoffs(START, START + timedelta(hours=30))[-1] == START + timedelta(hours=30)
    assert daily_cutoffs(START, START + timedelta(hours=5)) == [START + timedelta(hours=5)]
    with pytest.raises(ValueError, match="is not after started_at"):
        daily_cutoffs(START, START)
    with pytest.raises(ValueError, match="step_hours = 0: expected a positive"):
        daily_cutoffs(START, START + timedelta(hours=1), step_hours=0)


def test_lift_timeline_is_the_decision_estimator_on_cumulative_sums() -> None:
    rng = np.random.default_rng(0)
    # per-user (engagements, impressions) arriving over a week; treatment engages ~20 % more
    arrivals = rng.uniform(0, 168, size=800)
    treated = rng.random(800) < 0.5
    impressions = rng.integers(50, 500, size=800).astype(float)
    engagements = rng.binomial(impressions.astype(int), np.where(treated, 0.06, 0.05)).astype(float)

    def sums_until(cutoff: datetime) -> tuple[ArmSums, ArmSums]:
        seen = arrivals < (cutoff - START).total_seconds() / 3600
        return (
            ArmSums.from_user_totals(engagements[seen & ~treated], impressions[seen & ~treated]),
            ArmSums.from_user_totals(engagements[seen & treated], impressions[seen & treated]),
        )

    end = START + timedelta(hours=168)
    points = lift_timeline(START, daily_cutoffs(START, end), sums_until, alpha=0.05)
    assert [p.hours for p in points] == [24, 48, 72, 96, 120, 144, 168]
    final = relative_lift(*sums_until(end), alpha=0.05)
    assert (points[-1].lift, points[-1].ci_low, points[-1].ci_high) == (final.lift, final.ci_low, final.ci_high)
    widths = [p.ci_high - p.ci_low for p in points]
    assert widths[-1] < widths[0]  # more users, a tighter interval
    assert points[-1].users_control + points[-1].users_treatment == 800


def test_points_without_a_defined_lift_are_left_out() -> None:
    empty = ArmSums(n=0, sum_m=0.0, sum_d=0.0, sum_m2=0.0, sum_d2=0.0, sum_md=0.0)
    one = ArmSums.from_user_totals([3.0], [50.0])
    some = ArmSums.from_user_totals([3.0, 4.0, 1.0], [50.0, 60.0, 40.0])
    answers = {24: (empty, empty), 48: (one, some), 72: (some, some)}
    points = lift_timeline(
        START,
        [START + timedelta(hours=h) for h in answers],
        lambda cutoff: answers[int((cutoff - START).total_seconds() // 3600)],
        alpha=0.05,
    )
    assert [p.hours for p in points] == [72] and points[0].lift == 0.0
