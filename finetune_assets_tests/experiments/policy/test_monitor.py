"""The hourly harm/SRM monitor: unit behaviour and the sequential Monte-Carlo targets of docs/experiments.md.

Harness: 168 hourly looks, users per arm ~ Poisson(10,000) arriving uniformly, the user-clustered
DGP of ``_simulation.py``; N* = 20,000 (the forecast of both arms at 168 h). Replications and the
Monte-Carlo SE each band relies on:

* A/A, 2,000 runs (shared by the A/A false-stop and false-harm tests): SE 0.0049 at 0.05, 0.0032 at 0.0215,
  0.0028 at 0.016, 0.011 at 0.425.
* +10 %, 600 runs: SE 0.012 at the expected 0.912, so the 0.85 bar sits 5 SE below it.
* −10 %, 400 runs: SE 0.009 at the expected 0.966, so the 0.90 bar sits 7 SE below it.

The vectorized replays use the engine's own kernels (``relative_lift_arrays``, ``cs_half_width``,
``primary_harm_arrays``) and are cross-checked look by look against the scalar :func:`monitor`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import pytest

from finetune_assets.experiments.policy.guardrails import Guardrail, default_guardrails, guardrail_harm_check
from finetune_assets.experiments.policy.monitor import (
    MIN_HOURS,
    MIN_USERS_PER_ARM,
    MonitorResult,
    monitor,
    primary_harm_arrays,
)
from finetune_assets.experiments.stats.confidence_sequences import cs_half_width
from finetune_assets.experiments.stats.statistics import ArmSums, MeanSums, relative_lift_arrays
from finetune_assets_tests.experiments._simulation import HOURS, first_true_hour, hourly_arm_sums

N_STAR = 20_000
Z_975 = 1.959963984540054
HOUR = np.arange(1, HOURS + 1, dtype=np.float64)


@dataclass(frozen=True)
class Hourly:
    control: np.ndarray  # (runs, hours, 6) cumulative sums
    treatment: np.ndarray

    @property
    def ready30(self) -> np.ndarray:
        """The harness rule for the plain CS tests: ≥ 30 users per arm before any decision."""
        return np.minimum(self.control[..., 0], self.treatment[..., 0]) >= 30


def _arm(row: np.ndarray) -> ArmSums:
    return ArmSums(int(row[0]), *(float(x) for x in row[1:]))


@pytest.fixture(scope="module")
def aa() -> Hourly:
    rng = np.random.default_rng(20_240_701)
    return Hourly(hourly_arm_sums(rng, 2000, 10_000, 0.0), hourly_arm_sums(rng, 2000, 10_000, 0.0))


@pytest.fixture(scope="module")
def harm_runs() -> Hourly:
    rng = np.random.default_rng(20_240_708)
    return Hourly(hourly_arm_sums(rng, 400, 10_000, 0.0), hourly_arm_sums(rng, 400, 10_000, -0.10))


@pytest.fixture(scope="module")
def win_runs() -> Hourly:
    rng = np.random.default_rng(20_240_707)
    return Hourly(hourly_arm_sums(rng, 600, 10_000, 0.0), hourly_arm_sums(rng, 600, 10_000, 0.10))


def _two_sided_cs_rejects(runs: Hourly, n_star: float, side: str = "both") -> np.ndarray:
    lift, se = relative_lift_arrays(runs.control, runs.treatment)
    n_total = runs.control[..., 0] + runs.treatment[..., 0]
    half = cs_half_width(se, n_total, alpha=0.05, n_star=n_star)
    with np.errstate(invalid="ignore"):
        out = lift - half > 0 if side == "greater" else np.abs(lift) > half
    return runs.ready30 & out


# --- Monte-Carlo targets --------------------------------------------------------------------------------


@pytest.mark.slow  # a Monte-Carlo simulation of thousands of experiments
def test_always_valid_cs_checked_hourly_keeps_the_false_positive_rate(aa: Hourly) -> None:
    fpr = float(_two_sided_cs_rejects(aa, N_STAR).any(axis=1).mean())
    assert fpr <= 0.065, fpr  # expected about 0.0145–0.025 (this seed: 0.0225)


@pytest.mark.slow  # a Monte-Carlo simulation of thousands of experiments
@pytest.mark.parametrize("n_star", [N_STAR / 10, N_STAR * 10])
def test_cs_stays_valid_with_n_star_mis_set_tenfold(aa: Hourly, n_star: float) -> None:
    fpr = float(_two_sided_cs_rejects(aa, n_star).any(axis=1).mean())
    assert fpr <= 0.065, fpr  # expected about 0.0425 (N*/10) and 0.000 (10 N*)


@pytest.mark.slow  # a Monte-Carlo simulation of thousands of experiments
def test_naive_z_test_peeked_hourly_or_daily_inflates_the_false_positive_rate(aa: Hourly) -> None:
    """Negative control: the fixed-horizon test is not always-valid."""
    lift, se = relative_lift_arrays(aa.control, aa.treatment)
    with np.errstate(invalid="ignore"):
        significant = aa.ready30 & (np.abs(lift / se) > Z_975)
    hourly = float(significant.any(axis=1).mean())
    daily = float(significant[:, 23::24].any(axis=1).mean())
    final = float(significant[:, -1].mean())
    assert hourly >= 0.25, hourly  # expected about 0.425
    assert daily >= 0.12, daily  # expected about 0.179
    assert 0.035 <= final <= 0.065, final  # the fixed-horizon test at the single planned look


@pytest.mark.slow  # a Monte-Carlo simulation of thousands of experiments
def test_aa_false_harm_rate_of_the_monitor(aa: Hourly) -> None:
    _, _, stop = primary_harm_arrays(aa.control, aa.treatment, HOUR, n_star=N_STAR)
    rate = float(stop.any(axis=1).mean())
    assert rate <= 0.035, rate  # expected about 0.014; α_harm = 0.025 one-sided


def _guardrail_effects(control: np.ndarray, treatment: np.ndarray, col: int) -> tuple[np.ndarray, np.ndarray]:
    """Relative difference of a per-user mean (column col = Σx, col + 2 = Σx²) and its GrowthBook SE."""
    n_c, n_t = control[..., 0], treatment[..., 0]
    mean_c, mean_t = control[..., col] / n_c, treatment[..., col] / n_t
    var_c = (control[..., col + 2] - control[..., col] ** 2 / n_c) / (n_c - 1)
    var_t = (treatment[..., col + 2] - treatment[..., col] ** 2 / n_t) / (n_t - 1)
    effect = (mean_t - mean_c) / np.abs(mean_c)
    se = np.sqrt(var_t / (n_t * mean_c**2) + var_c * mean_t**2 / (n_c * mean_c**4))
    return effect, se


@pytest.mark.slow  # a Monte-Carlo simulation of thousands of experiments
def test_aa_false_harm_rate_of_the_guardrails_is_bonferroni_bounded(aa: Hourly) -> None:
    """Error budget: ≤ 0.025 summed over guardrails — K = 2 guardrails at α_harm/K each."""
    c, t = aa.control, aa.treatment
    ready = (HOUR >= MIN_HOURS) & (np.minimum(c[..., 0], t[..., 0]) >= MIN_USERS_PER_ARM)
    ready &= np.minimum(c[..., 1], t[..., 1]) >= 25
    n_total = c[..., 0] + t[..., 0]
    harm = np.zeros(ready.shape, dtype=bool)
    for col in (1, 2):  # engagements per user, impressions per user
        with np.errstate(divide="ignore", invalid="ignore"):
            effect, se = _guardrail_effects(c, t, col)
            upper = effect + cs_half_width(se, n_total, alpha=0.025 / 2, n_star=N_STAR, one_sided=True)
        harm |= ready & (upper < 0)
    rate = float(harm.any(axis=1).mean())
    assert rate <= 0.035, rate
    # The vectorized formula is the guardrail's own harm check.
    for run, hour in ((0, 10), (1, 100), (2, 167)):
        guard = default_guardrails(_arm(c[run, hour]), _arm(t[run, hour]))[1]  # engagements per user
        check = guardrail_harm_check(guard, alpha=0.0125, n_star=N_STAR)
        effect, se = _guardrail_effects(c[run, hour], t[run, hour], 1)
        assert check.upper_bound == pytest.approx(
            float(effect)
            + cs_half_width(float(se), float(n_total[run, hour]), alpha=0.0125, n_star=N_STAR, one_sided=True)
        )


@pytest.mark.slow  # a Monte-Carlo simulation of thousands of experiments
def test_always_valid_cs_power_at_plus_10_percent(win_runs: Hourly) -> None:
    first = first_true_hour(_two_sided_cs_rejects(win_runs, N_STAR, side="greater"))
    power = float(np.isfinite(first).mean())
    assert power >= 0.85, power  # expected about 0.912
    assert float(np.median(first)) <= 110  # expected about 83 h (non-stoppers count as ∞)


@pytest.mark.slow  # a Monte-Carlo simulation of thousands of experiments
def test_harm_detection_at_minus_10_percent(harm_runs: Hourly) -> None:
    _, _, stop = primary_harm_arrays(harm_runs.control, harm_runs.treatment, HOUR, n_star=N_STAR)
    first = first_true_hour(stop)
    power = float(np.isfinite(first).mean())
    assert power >= 0.90, power  # expected about 0.966
    assert float(np.median(first)) <= 90  # expected about 60 h
    assert float(np.min(first)) >= MIN_HOURS  # never before the minimum


@pytest.mark.slow  # a Monte-Carlo simulation of thousands of experiments
def test_vectorized_replay_is_the_scalar_monitor(harm_runs: Hourly, aa: Hourly) -> None:
    for runs, indices in ((harm_runs, range(6)), (aa, range(3))):
        lift, upper, stop = primary_harm_arrays(runs.control, runs.treatment, HOUR, n_star=N_STAR)
        for run in indices:
            previous = 1.0
            for hour in range(HOURS):
                result = monitor(
                    _arm(runs.control[run, hour]),
                    _arm(runs.treatment[run, hour]),
                    hours_elapsed=float(HOUR[hour]),
                    n_star=N_STAR,
                    srm_previous_p=previous,
                )
                previous = result.srm.running_min_p
                assert (result.action == "stop_harm") == bool(stop[run, hour]), (run, hour, result.reason)
                if result.lift is not None:
                    assert result.lift.lift == pytest.approx(lift[run, hour], rel=1e-9, abs=1e-12)
                    assert result.primary.upper_bound == pytest.approx(upper[run, hour], rel=1e-9, abs=1e-12)


# --- unit behaviour ----------------------------------------------------------------------------------------


def _users(rng: np.random.Generator, n: int, lift: float, impressions_scale: float = 1.0) -> ArmSums:
    d = np.round((1 + rng.negative_binomial(2, 2 / 11, size=n)) * impressions_scale).astype(int) + 1
    m = rng.binomial(d, np.minimum(rng.beta(1.14, 17.86, size=n) * (1 + lift), 1.0))
    return ArmSums.from_user_totals(m, d)


def _pair(seed: int, n_c: int, n_t: int, lift: float) -> tuple[ArmSums, ArmSums]:
    rng = np.random.default_rng(seed)
    return _users(rng, n_c, 0.0), _users(rng, n_t, lift)


def test_no_decision_before_the_minimums() -> None:
    control, treatment = _pair(1, 5000, 5000, -0.5)  # obvious harm
    early = monitor(control, treatment, hours_elapsed=5.9, n_star=N_STAR)
    assert early.action == "continue"
    assert not early.ready
    assert early.primary.harm  # the statistic says harm, the rule says wait
    assert "too early" in early.reason
    assert "6 h" in early.reason
    assert monitor(control, treatment, hours_elapsed=6.0, n_star=N_STAR).action == "stop_harm"

    few_c, few_t = _pair(2, 199, 250, -0.9)
    result = monitor(few_c, few_t, hours_elapsed=30, n_star=N_STAR)
    assert result.action == "continue"
    assert "200 users per arm" in result.reason

    # 300 users with ~1 impression each → < 25 engagements per arm.
    rng = np.random.default_rng(3)
    thin_c = ArmSums.from_user_totals(rng.binomial(1, 0.06, size=300), np.ones(300))
    thin_t = ArmSums.from_user_totals(rng.binomial(1, 0.03, size=300), np.ones(300))
    result = monitor(thin_c, thin_t, hours_elapsed=30, n_star=N_STAR)
    assert result.action == "continue"
    assert "25 engagements per arm" in result.reason


def test_harm_stop_reason_names_the_numbers() -> None:
    control, treatment = _pair(4, 8000, 8000, -0.25)
    result = monitor(control, treatment, hours_elapsed=48, n_star=N_STAR)
    assert result.action == "stop_harm"
    assert result.stop
    assert result.lift is not None
    assert result.primary.upper_bound is not None
    assert result.primary.upper_bound < 0
    assert result.reason.startswith("stop and roll back to production after 48 h")
    assert "engagement rate" in result.reason
    assert f"{result.lift.lift * 100:+.1f}%".replace("-", "−") in result.reason
    assert "8,000 control / 8,000 treatment users" in result.reason


def test_no_harm_continues() -> None:
    control, treatment = _pair(5, 8000, 8000, 0.0)
    result = monitor(control, treatment, hours_elapsed=48, n_star=N_STAR)
    assert result.action == "continue"
    assert result.ready
    assert "no harm so far" in result.reason
    json.dumps(result.to_details())  # JSON-safe for the store


def test_guardrail_harm_stops_at_alpha_over_k() -> None:
    rng = np.random.default_rng(6)
    control, treatment = _users(rng, 8000, 0.0), _users(rng, 8000, 0.0, impressions_scale=0.7)
    guardrails = default_guardrails(control, treatment)
    result = monitor(control, treatment, hours_elapsed=72, n_star=N_STAR, guardrails=guardrails)
    assert result.action == "stop_harm"
    assert not result.primary.harm  # the rate is unchanged; fewer impressions per user is the harm
    assert [g.alpha for g in result.guardrails] == [0.0125, 0.0125]
    assert "impressions per user" in result.reason
    # A lower-is-better guardrail (e.g. reports per user) is harmed by an increase.
    reports = Guardrail("reports per user", MeanSums(8000, 400, 420), MeanSums(8000, 800, 860), higher_is_better=False)
    result = monitor(control, control, hours_elapsed=72, n_star=N_STAR, guardrails=[reports])
    assert result.action == "stop_harm"
    assert "reports per user: +100.0%" in result.reason
    assert "lower bound" in result.reason


def test_srm_stop_needs_only_the_hours_minimum_and_persists() -> None:
    control, treatment = _pair(7, 400, 150, 0.0)  # treatment arm loses most users: < 200 users
    early = monitor(control, treatment, hours_elapsed=3, n_star=N_STAR)
    assert early.action == "continue"
    assert early.srm.alarm
    later = monitor(control, treatment, hours_elapsed=6, n_star=N_STAR, srm_previous_p=early.srm.running_min_p)
    assert later.action == "stop_srm"
    assert "sample ratio mismatch" in later.reason
    assert "new salt" in later.reason
    # An alarm earlier in the test is never forgotten, even when the counts later look balanced.
    balanced_c, balanced_t = _pair(8, 5000, 5000, 0.0)
    result = monitor(balanced_c, balanced_t, hours_elapsed=50, n_star=N_STAR, srm_previous_p=1e-5)
    assert result.action == "stop_srm"
    # Exposure counts can come from the exposure table instead of the analysis sums.
    result = monitor(balanced_c, balanced_t, hours_elapsed=50, n_star=N_STAR, exposures=(5000, 4000))
    assert result.action == "stop_srm"
    assert result.srm.counts == (5000, 4000)


def test_hourly_chi_square_mismatch_is_only_a_warning() -> None:
    # 5,000 vs 4,600: χ² p ≈ 4e-5 < 0.001, while the sequential test's anytime p ≈ 0.0026 stays above it.
    control, treatment = _pair(9, 5000, 4600, 0.0)
    result = monitor(control, treatment, hours_elapsed=20, n_star=N_STAR)
    assert result.srm_chi2.status == "mismatch"
    assert not result.srm.alarm
    assert result.action == "continue"
    assert any("hourly χ² warning" in w for w in result.warnings)


def test_unequal_split_is_not_srm() -> None:
    control, treatment = _pair(10, 8000, 2000, 0.0)
    assert monitor(control, treatment, hours_elapsed=24, n_star=N_STAR, split=0.2).action == "continue"
    assert monitor(control, treatment, hours_elapsed=24, n_star=N_STAR).action == "stop_srm"


def test_empty_arms_continue_without_errors() -> None:
    empty = ArmSums(0, 0, 0, 0, 0, 0)
    result = monitor(empty, empty, hours_elapsed=0, n_star=N_STAR)
    assert isinstance(result, MonitorResult)
    assert result.action == "continue"
    assert result.lift is None
    assert result.primary.upper_bound is None
    assert not math.isnan(result.srm.running_min_p)


def test_monitor_argument_validation() -> None:
    control, treatment = _pair(11, 300, 300, 0.0)
    cases = [
        ({"hours_elapsed": -1.0, "n_star": N_STAR}, "hours_elapsed"),
        ({"hours_elapsed": 10.0, "n_star": 0}, "n_star"),
        ({"hours_elapsed": 10.0, "n_star": N_STAR, "alpha_harm": 0.5}, "alpha_harm"),
        ({"hours_elapsed": 10.0, "n_star": N_STAR, "split": 1.0}, "split"),
        ({"hours_elapsed": 10.0, "n_star": N_STAR, "srm_previous_p": 2.0}, "previous_p"),
    ]
    for kwargs, name in cases:
        with pytest.raises(ValueError, match=name):
            monitor(control, treatment, **kwargs)  # type: ignore[arg-type]
