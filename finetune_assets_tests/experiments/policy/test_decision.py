"""The final promotion decision and the guardrails' non-inferiority test.

Monte-Carlo bands: the power check uses 400 runs of 20,000 users per arm (power SE 0.017 at the expected
0.872, so the 0.80 bar is ≥ 4 SE below it); the A/A false-promotion rate uses 1,000 runs of 2,000 users per
arm (SE 0.0049 at 0.025; the bar 0.04 is 3 SE above the nominal 0.025).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from finetune_assets.experiments.policy.decision import final_decision
from finetune_assets.experiments.policy.guardrails import Guardrail, default_guardrails, non_inferiority
from finetune_assets.experiments.policy.monitor import monitor
from finetune_assets.experiments.stats.statistics import ArmSums, MeanSums, relative_lift


def _users(rng: np.random.Generator, n: int, lift: float, impressions_scale: float = 1.0) -> ArmSums:
    d = np.maximum(1, np.round((1 + rng.negative_binomial(2, 2 / 11, size=n)) * impressions_scale)).astype(int)
    m = rng.binomial(d, np.minimum(rng.beta(1.14, 17.86, size=n) * (1 + lift), 1.0))
    return ArmSums.from_user_totals(m, d)


def _pair(seed: int, n_c: int, n_t: int, lift: float, impressions_scale: float = 1.0) -> tuple[ArmSums, ArmSums]:
    rng = np.random.default_rng(seed)
    return _users(rng, n_c, 0.0), _users(rng, n_t, lift, impressions_scale)


def _final_sums(rng: np.random.Generator, runs: int, n: int, lift: float) -> list[ArmSums]:
    """`runs` arms of `n` users, reduced to sums 50 runs at a time (memory-bounded, vectorized)."""
    out: list[ArmSums] = []
    for start in range(0, runs, 50):
        k = min(50, runs - start)
        d = 1 + rng.negative_binomial(2, 2 / 11, size=(k, n))
        m = rng.binomial(d, np.minimum(rng.beta(1.14, 17.86, size=(k, n)) * (1 + lift), 1.0)).astype(float)
        d_f = d.astype(float)
        sums = np.stack([m.sum(1), d_f.sum(1), (m * m).sum(1), (d_f * d_f).sum(1), (m * d_f).sum(1)], axis=1)
        out += [ArmSums(n, *(float(x) for x in row)) for row in sums]
    return out


def _pct(x: float) -> str:
    return f"{x * 100:+.1f}%".replace("-", "−")


# --- final decision ----------------------------------------------------------------------------------------


def test_clear_win_with_healthy_guardrails_promotes() -> None:
    control, treatment = _pair(1, 10_000, 10_000, 0.20)
    decision = final_decision(control, treatment, guardrails=default_guardrails(control, treatment, margin=0.05))
    assert (decision.action, decision.code, decision.status, decision.store_decision) == (
        "promote",
        "win",
        "decided",
        "promote",
    )
    assert decision.lift is not None
    assert decision.lift.alpha == 0.05  # α_win 0.025 one-sided ≡ 95 % two-sided CI
    assert decision.lift.ci_low > 0
    assert decision.reason.startswith("promote the candidate: the candidate changed the engagement rate by +")
    for value in (decision.lift.lift, decision.lift.ci_low, decision.lift.ci_high):
        assert _pct(value) in decision.reason
    assert "impressions per user" in decision.reason
    assert all(c.passed for c in decision.checks)
    json.dumps(decision.to_details())


def test_promotion_is_the_95_percent_ci_lower_bound() -> None:
    control, treatment = _pair(2, 10_000, 10_000, 0.06)
    est = relative_lift(control, treatment, alpha=0.05)
    for alpha_win in (0.005, 0.025, 0.1):
        decision = final_decision(control, treatment, alpha_win=alpha_win)
        one_sided_p = est.p_value / 2 if est.lift > 0 else 1 - est.p_value / 2
        assert (decision.action == "promote") == (one_sided_p < alpha_win), (alpha_win, est)


def test_no_effect_and_worse_keep_production() -> None:
    flat = final_decision(*_pair(3, 10_000, 10_000, 0.0))
    assert (flat.action, flat.code) == ("keep", "not_significant")
    assert flat.reason.startswith("keep production: the candidate changed the engagement rate by")
    assert "not a significant improvement" in flat.reason
    worse = final_decision(*_pair(4, 10_000, 10_000, -0.2))
    assert (worse.action, worse.code) == ("keep", "worse")
    assert "significantly worse" in worse.reason


def test_srm_makes_the_test_invalid_even_with_a_big_lift() -> None:
    control, treatment = _pair(5, 10_000, 9_000, 0.3)
    decision = final_decision(control, treatment)
    assert (decision.action, decision.code, decision.status, decision.store_decision) == (
        "invalid",
        "srm",
        "invalid",
        "keep",
    )
    assert decision.reason.startswith("invalid — do not promote: sample ratio mismatch")
    assert "10,000" in decision.reason
    assert "9,000" in decision.reason
    assert "new salt" in decision.reason
    # The sequential alarm during the test is enough, even if the final counts look balanced.
    balanced = _pair(6, 10_000, 10_000, 0.3)
    decision = final_decision(*balanced, srm_sequential_p=0.0004)
    assert (decision.action, decision.code) == ("invalid", "srm")
    assert "sequential SRM" in decision.reason
    # Exposure counts from the exposure table take precedence over the analysed users.
    assert final_decision(*balanced, exposures=(10_000, 9_000)).action == "invalid"
    # A configured 80/20 split is no SRM.
    assert final_decision(*_pair(7, 16_000, 4_000, 0.3), split=0.2).action == "promote"


def test_harm_alarm_keeps_production() -> None:
    control, treatment = _pair(8, 10_000, 10_000, 0.2)
    decision = final_decision(control, treatment, harm_alarm=True)
    assert (decision.action, decision.code) == ("keep", "harm_alarm")
    assert "significantly worse" in decision.reason
    # The last monitor result works as well.
    harmed = monitor(*_pair(9, 5000, 5000, -0.4), hours_elapsed=40, n_star=20_000)
    assert harmed.action == "stop_harm"
    assert final_decision(control, treatment, harm_alarm=harmed).code == "harm_alarm"
    fine = monitor(control, treatment, hours_elapsed=40, n_star=20_000)
    assert final_decision(control, treatment, harm_alarm=fine).action == "promote"


def test_guardrail_failure_keeps_production() -> None:
    # Higher engagement rate, but users get 15 % fewer impressions: the ratio moved by its denominator.
    control, treatment = _pair(10, 10_000, 10_000, 0.15, impressions_scale=0.85)
    decision = final_decision(control, treatment, guardrails=default_guardrails(control, treatment))
    assert decision.lift is not None
    assert decision.lift.ci_low > 0
    assert (decision.action, decision.code) == ("keep", "guardrail")
    assert "impressions per user" in decision.reason
    assert "may be worse than the margin allows" in decision.reason
    failed = [c.name for c in decision.checks if not c.passed]
    assert "guardrail:impressions per user" in failed
    assert all(name.startswith("guardrail:") for name in failed)


def test_not_enough_data_or_open_windows_keep_production() -> None:
    few = final_decision(*_pair(11, 150, 160, 0.5))
    assert (few.action, few.code) == ("keep", "too_few_users")
    assert "not enough data" in few.reason
    control, treatment = _pair(12, 10_000, 10_000, 0.2)
    early = final_decision(control, treatment, windows_complete=False)
    assert (early.action, early.code) == ("keep", "windows_open")
    assert "attribution window" in early.reason
    no_engagement = ArmSums(300, 0, 3000, 0, 40_000, 0)
    result = final_decision(no_engagement, no_engagement, min_engagements_per_arm=0)
    assert (result.action, result.code) == ("keep", "no_data")


@pytest.mark.slow  # a Monte-Carlo simulation of thousands of experiments
def test_power_of_the_fixed_promotion_test_at_plus_5_percent_20k_per_arm() -> None:
    rng = np.random.default_rng(20_240_705)
    control, treatment = _final_sums(rng, 400, 20_000, 0.0), _final_sums(rng, 400, 20_000, 0.05)
    promoted = [final_decision(c, t).action == "promote" for c, t in zip(control, treatment, strict=True)]
    power = float(np.mean(promoted))
    assert power >= 0.80, power  # expected ≈ 0.872
    # With the default guardrails (impressions and engagements per user, 5 % margin) the power holds.
    guarded = [
        final_decision(c, t, guardrails=default_guardrails(c, t)).action == "promote"
        for c, t in zip(control, treatment, strict=True)
    ]
    assert float(np.mean(guarded)) >= 0.80


@pytest.mark.slow  # a Monte-Carlo simulation of thousands of experiments
def test_aa_false_promotion_rate_is_one_sided_alpha_win() -> None:
    rng = np.random.default_rng(20_240_706)
    control, treatment = _final_sums(rng, 1000, 2000, 0.0), _final_sums(rng, 1000, 2000, 0.0)
    promoted = [final_decision(c, t).action == "promote" for c, t in zip(control, treatment, strict=True)]
    rate = float(np.mean(promoted))
    assert rate <= 0.04, rate  # P(promote | no effect) ≤ α_win = 0.025 (+3 SE)


def test_argument_validation() -> None:
    control, treatment = _pair(13, 300, 300, 0.0)
    cases = [
        ({"alpha_win": 0.5}, "alpha_win"),
        ({"ni_alpha": 0.0}, "ni_alpha"),
        ({"split": 0.0}, "split"),
        ({"srm_sequential_p": 1.5}, "srm_sequential_p"),
        ({"min_users_per_arm": 1}, "min_users_per_arm"),
    ]
    for kwargs, name in cases:
        with pytest.raises(ValueError, match=name):
            final_decision(control, treatment, **kwargs)  # type: ignore[arg-type]


# --- guardrails (non-inferiority) --------------------------------------------------------------------------


def test_non_inferiority_bound_and_direction() -> None:
    # 10,000 users per arm, mean 10 vs 9.95 (−0.5 %), sd ≈ 7: SE ≈ 1 %, so the 97.5 % bound ≈ −1.9 %.
    rng = np.random.default_rng(14)
    c_values, t_values = rng.normal(10, 7, size=10_000), rng.normal(9.95, 7, size=10_000)
    guard = Guardrail("impressions per user", MeanSums.from_values(c_values), MeanSums.from_values(t_values), 0.05)
    result = non_inferiority(guard)
    est = guard.effect(alpha=0.05)
    assert est is not None
    assert result.bound == pytest.approx(est.ci_low)
    assert result.passed == (est.ci_low > -0.05)
    assert result.passed
    tight = non_inferiority(Guardrail("impressions per user", guard.control, guard.treatment, margin=0.001))
    assert not tight.passed
    # Lower is better: the upper bound must stay below +margin.
    reports = Guardrail("reports per user", guard.treatment, guard.control, 0.05, higher_is_better=False)
    flipped = non_inferiority(reports)
    assert flipped.bound is not None
    assert flipped.bound == pytest.approx(reports.effect(alpha=0.05).ci_high)  # type: ignore[union-attr]
    empty = non_inferiority(Guardrail("posts per user", MeanSums(1, 1, 1), MeanSums(0, 0, 0)))
    assert not empty.passed
    assert "not enough data" in empty.message
    with pytest.raises(ValueError, match="margin"):
        Guardrail("x", MeanSums(2, 1, 1), MeanSums(2, 1, 1), margin=1.5)
