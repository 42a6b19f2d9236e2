"""Sequential SRM: the Bayes factor, the running minimum and its Monte-Carlo alarm rates.

Monte-Carlo SRM targets use counts only (users per hour ~ Poisson), so they are cheap: 4,000 A/A runs
(SE of a rate near 0.02 is 0.0022; near 0.0005 it is 0.00035) and 1,000 runs with 5 % of treatment
users lost (SE near 0.8 is 0.0126).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from finetune_assets.experiments.stats.sequential import sequential_srm, srm_log_bayes_factor
from finetune_assets.experiments.stats.srm import srm_p_values
from finetune_assets_tests.experiments._simulation import first_true_hour, hourly_exposure_counts


def test_srm_bayes_factor_is_dirichlet_multinomial_over_multinomial() -> None:
    for counts, weights in (([520, 480], [0.5, 0.5]), ([300, 620, 80], [0.3, 0.6, 0.1]), ([0, 0], [0.5, 0.5])):
        theta = np.array(weights) / sum(weights)
        alpha = 100 * theta
        expected = stats.dirichlet_multinomial.logpmf(counts, alpha, sum(counts)) - stats.multinomial.logpmf(
            counts, sum(counts), theta
        )
        if sum(counts) == 0:
            expected = 0.0
        assert float(srm_log_bayes_factor(counts, weights)) == pytest.approx(expected, abs=1e-9)
    # Arms on the last axis, any leading shape; a weight-0 arm is dropped.
    grid = np.array([[[10, 12], [100, 90]], [[5, 5], [1000, 700]]])
    out = srm_log_bayes_factor(grid, [0.5, 0.5])
    assert out.shape == (2, 2)
    assert out[1, 1] == pytest.approx(float(srm_log_bayes_factor([1000, 700], [0.5, 0.5])))
    assert float(srm_log_bayes_factor([1000, 700, 33], [0.5, 0.5, 0.0])) == pytest.approx(out[1, 1])


def test_sequential_srm_keeps_the_running_minimum() -> None:
    first = sequential_srm([5000, 4400], [0.5, 0.5])
    assert first.alarm
    assert first.running_min_p == first.p_value < 0.001
    assert "sample ratio mismatch" in first.message
    # A later look that looks fine does not clear an alarm: anytime p is a running minimum.
    later = sequential_srm([10_000, 10_050], [0.5, 0.5], previous_p=first.running_min_p)
    assert later.p_value == 1.0 or later.p_value > 0.01
    assert later.running_min_p == first.running_min_p
    assert later.alarm
    fine = sequential_srm([10_000, 10_050], [0.5, 0.5])
    assert not fine.alarm
    assert "no sample ratio mismatch" in fine.message
    # A configured 80/20 split is no mismatch.
    assert not sequential_srm([8000, 2000], [0.8, 0.2]).alarm
    assert sequential_srm([8000, 2000], [0.5, 0.5]).alarm


def test_bad_inputs_raise_value_error_naming_them() -> None:
    cases = [
        (lambda: sequential_srm([1, 2], [0.5]), "equal length"),
        (lambda: sequential_srm([1, 2], [0.5, 0.5], previous_p=1.5), "previous_p"),
        (lambda: srm_log_bayes_factor([1, 2], [0.5, 0.5], prior_strength=0), "prior_strength"),
        (lambda: srm_log_bayes_factor([1, -2], [0.5, 0.5]), "counts"),
        (lambda: srm_log_bayes_factor([1, 2], [-1.0, 2.0]), "weights"),
    ]
    for call, name in cases:
        with pytest.raises(ValueError, match=name):
            call()


@pytest.fixture(scope="module")
def aa_exposures() -> np.ndarray:
    return hourly_exposure_counts(np.random.default_rng(9_001), 4000, 20_000, 0.0)


def test_hourly_chi_square_is_only_a_warning(aa_exposures: np.ndarray) -> None:
    p = srm_p_values(aa_exposures, [0.5, 0.5])
    any_hour = float((p < 0.001).any(axis=1).mean())
    assert any_hour <= 0.03, any_hour  # expected 0.015–0.0215; SE 0.0022 at 4,000 runs
    # Not sequentially valid: peeking hourly raises the A/A alarm rate well above the single look's.
    assert any_hour > float((p[:, -1] < 0.001).mean())


def test_sequential_srm_aa_false_alarms(aa_exposures: np.ndarray) -> None:
    log_bf = srm_log_bayes_factor(aa_exposures, [0.5, 0.5])
    anytime_p = np.minimum.accumulate(np.minimum(1.0, np.exp(-log_bf)), axis=1)
    rate = float((anytime_p < 0.001).any(axis=1).mean())
    assert rate <= 0.003, rate  # expected ≈ 0.0005; SE 0.00035 at 4,000 runs
    # The scalar API, look by look, carries the same running minimum.
    previous = 1.0
    for hour in range(aa_exposures.shape[1]):
        result = sequential_srm(list(aa_exposures[0, hour]), [0.5, 0.5], previous_p=previous)
        previous = result.running_min_p
        assert previous == pytest.approx(anytime_p[0, hour], rel=1e-9)


def test_sequential_srm_detects_5_percent_of_treatment_users_lost() -> None:
    counts = hourly_exposure_counts(np.random.default_rng(9_005), 1000, 20_000, 0.05)
    log_bf = srm_log_bayes_factor(counts, [0.5, 0.5])
    alarm = np.minimum.accumulate(np.exp(-log_bf), axis=1) < 0.001
    detection = float(alarm.any(axis=1).mean())
    assert detection >= 0.70, detection  # expected ≈ 0.794; SE 0.0126 at 1,000 runs
    assert float(np.median(first_true_hour(alarm))) <= 150  # expected median ≈ 100–115 h
