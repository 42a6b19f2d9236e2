"""Fixed-horizon χ² sample ratio mismatch: exact p-values and Monte-Carlo alarm rates."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from finetune_assets.experiments.stats.srm import SRM_THRESHOLD, check_srm, srm_p_value, srm_p_values


def test_srm_p_value_matches_pearson_chi_square() -> None:
    assert srm_p_value([1000, 1100], [0.5, 0.5]) == pytest.approx(stats.chisquare([1000, 1100]).pvalue)
    expected = stats.chisquare([300, 620, 80], f_exp=[300, 600, 100]).pvalue
    assert srm_p_value([300, 620, 80], [0.3, 0.6, 0.1]) == pytest.approx(expected)
    # Weight ≤ 0 arms are skipped (df shrinks with them); no users → p = 1.
    assert srm_p_value([1000, 1100, 57], [0.5, 0.5, 0.0]) == pytest.approx(srm_p_value([1000, 1100], [1, 1]))
    assert srm_p_value([0, 0], [0.5, 0.5]) == 1.0
    # A whole arm lost is the worst mismatch, not a skipped arm.
    assert srm_p_value([500, 0], [0.5, 0.5]) < 1e-100


def test_srm_single_check_aa_false_alarm_rate() -> None:
    rng = np.random.default_rng(9)
    totals = rng.poisson(40_000, size=20_000)
    treated = rng.binomial(totals, 0.5)
    p = np.array([srm_p_value([int(n - k), int(k)], [0.5, 0.5]) for n, k in zip(totals, treated, strict=True)])
    assert float(np.mean(p < SRM_THRESHOLD)) <= 0.004  # expected 0.001; SE 0.00022 at 20,000 runs


def test_srm_detects_5_percent_of_treatment_users_dropped() -> None:
    rng = np.random.default_rng(99)
    control = rng.poisson(20_000, size=2000)
    treatment = rng.binomial(rng.poisson(20_000, size=2000), 0.95)
    p = np.array([srm_p_value([int(c), int(t)], [0.5, 0.5]) for c, t in zip(control, treatment, strict=True)])
    assert float(np.mean(p < SRM_THRESHOLD)) >= 0.90  # expected ≈ 0.9635; SE 0.0042


def test_check_srm_statuses() -> None:
    assert check_srm([7, 8], [0.5, 0.5]).status == "not_enough_traffic"  # 15 < 2 × 8
    assert "not enough traffic" in check_srm([7, 8], [0.5, 0.5]).message
    ok = check_srm([10_000, 10_050], [0.5, 0.5])
    assert ok.passed
    assert ok.status == "ok"
    bad = check_srm([10_000, 9_000], [0.5, 0.5])
    assert bad.status == "mismatch"
    assert not bad.passed
    assert f"p={bad.p_value:.2g}" in bad.message
    assert "10,000 vs 9,000" in bad.message
    assert check_srm([16, 0], [0.5, 0.5]).status == "mismatch"


def test_srm_p_values_vectorized_matches_scalar() -> None:
    rng = np.random.default_rng(5)
    counts = rng.integers(0, 2000, size=(50, 3))
    counts[0] = 0
    for weights in ([0.5, 0.5, 0.0], [0.2, 0.3, 0.5]):
        vec = srm_p_values(counts, weights)
        assert vec.tolist() == pytest.approx([srm_p_value(list(c), weights) for c in counts])


def test_bad_arguments_raise_value_error_naming_the_argument() -> None:
    with pytest.raises(ValueError, match="counts and weights"):
        srm_p_value([1, 2, 3], [0.5, 0.5])
