"""Welch tests on per-arm means: golden values computed with GrowthBook's gbstats."""

from __future__ import annotations

import pytest

from finetune_assets.experiments.stats.effects import (
    EffectEstimate,
    proportion_variance,
    welch_absolute,
    welch_relative,
)
from finetune_assets.experiments.stats.statistics import mean_and_variance


def _rounded(e: EffectEstimate) -> tuple[float, ...]:
    return tuple(round(x, 5) for x in (e.expected, e.ci_low, e.ci_high, e.se, e.p_value))


def _gbstats_inputs() -> tuple[float, float, int, float, float, int]:
    # gbstats SampleMeanStatistic(n, sum, sum_squares): mean = Σ/n, variance = (Σx² − (Σx)²/n)/(n − 1).
    mean_c, var_c = mean_and_variance(1396.87, 52377.9767, 3407)
    mean_t, var_t = mean_and_variance(2422.7, 134698.29, 3461)
    return mean_c, var_c, 3407, mean_t, var_t, 3461


def test_welch_relative_golden() -> None:
    assert _rounded(welch_relative(*_gbstats_inputs(), alpha=0.05)) == (
        0.70732,
        -0.03526,
        1.44989,
        0.37879,
        0.06191,
    )


def test_welch_absolute_golden() -> None:
    assert _rounded(welch_absolute(*_gbstats_inputs())) == (0.29, 0.04538, 0.53462, 0.12478, 0.02016)


def test_proportions_relative_golden() -> None:
    p_c, p_t = 14 / 28, 16 / 30
    result = welch_relative(p_c, proportion_variance(p_c), 28, p_t, proportion_variance(p_t), 30)
    assert _rounded(result) == (0.06667, -0.47767, 0.61101, 0.2717, 0.80707)


def test_bad_arguments_raise_value_error_naming_the_argument() -> None:
    cases = [
        (lambda: welch_relative(0.0, 1.0, 10, 1.0, 1.0, 10), "mean_c"),
        (lambda: welch_absolute(1.0, 1.0, 1, 1.0, 1.0, 10), "n_c"),
        (lambda: proportion_variance(1.5), "p"),
    ]
    for call, name in cases:
        with pytest.raises(ValueError, match=name):
            call()
