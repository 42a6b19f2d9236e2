"""The pre-launch power gate and the phase-change validator."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from finetune_assets.experiments.policy.launch import estimate_design_effect, power_gate, validate_phase_change
from finetune_assets.experiments.runtime.assignment import assign_many
from finetune_assets.experiments.stats.power import required_impressions_per_arm
from finetune_assets.experiments.stats.statistics import ArmSums


def _users(rng: np.random.Generator, n: int, lift: float, impressions_scale: float = 1.0) -> ArmSums:
    d = np.maximum(1, np.round((1 + rng.negative_binomial(2, 2 / 11, size=n)) * impressions_scale)).astype(int)
    m = rng.binomial(d, np.minimum(rng.beta(1.14, 17.86, size=n) * (1 + lift), 1.0))
    return ArmSums.from_user_totals(m, d)


# --- power gate ------------------------------------------------------------------------------------------


def test_power_gate_worked_example() -> None:
    # 6 % baseline, 5 % relative MDE, DE 1.7 → ≈ 171k impressions/arm ≈ 17k users/arm at 10 per user.
    gate = power_gate(
        relative_mde=0.05, forecast_users=40_000, baseline_rate=0.06, design_effect=1.7, impressions_per_user=10
    )
    assert gate.ok
    assert gate.required_impressions_per_arm[0] == pytest.approx(171_134, abs=2)
    assert gate.required_impressions_per_arm[0] == pytest.approx(
        required_impressions_per_arm(0.06, 0.05, design_effect=1.7), abs=2
    )
    assert gate.required_users_per_arm == (17_114, 17_114)
    assert gate.required_users == 34_227
    assert gate.power_at_forecast > 0.8
    assert gate.reason.startswith("enough traffic")

    short = power_gate(
        relative_mde=0.05, forecast_users=20_000, baseline_rate=0.06, design_effect=1.7, impressions_per_user=10
    )
    assert not short.ok
    assert 0.3 < short.power_at_forecast < 0.8
    assert short.mde_at_forecast is not None
    assert short.mde_at_forecast > 0.05
    assert short.reason.startswith("under-powered:")
    assert "34,227 users" in short.reason
    assert "20,000" in short.reason
    assert "Raise the MDE or the coverage" in short.reason

    # At exactly the required sample the power is the target, and the detectable MDE is the target MDE.
    exact = power_gate(
        relative_mde=0.05, forecast_users=34_227, baseline_rate=0.06, design_effect=1.7, impressions_per_user=10
    )
    assert exact.power_at_forecast == pytest.approx(0.8, abs=0.001)
    assert exact.mde_at_forecast == pytest.approx(0.05, abs=0.0005)


def test_power_gate_from_historical_sums_and_unequal_split() -> None:
    historical = _users(np.random.default_rng(15), 50_000, 0.0)
    de = estimate_design_effect(historical)
    assert 1.4 < de < 2.1  # DE ≈ 1.70 for this DGP
    gate = power_gate(relative_mde=0.05, forecast_users=40_000, historical=historical)
    assert gate.design_effect == pytest.approx(de)
    assert gate.baseline_rate == pytest.approx(historical.rate)
    assert gate.impressions_per_user == pytest.approx(historical.sum_d / historical.n)
    skewed = power_gate(relative_mde=0.05, forecast_users=40_000, historical=historical, split=0.2)
    # ≈ 1/(4·s·(1 − s)) = 1.5625× the 50/50 total; a bit more, as the larger variance p₂q₂ sits in the
    # smaller (treatment) arm.
    ratio = skewed.required_users / gate.required_users
    assert 1 / (4 * 0.2 * 0.8) <= ratio <= 1.02 / (4 * 0.2 * 0.8)
    assert skewed.required_users_per_arm[1] < skewed.required_users_per_arm[0]
    negative = power_gate(relative_mde=-0.05, forecast_users=40_000, historical=historical)
    assert negative.mde_at_forecast is not None
    assert negative.mde_at_forecast < 0


def test_power_gate_argument_validation() -> None:
    base = {"relative_mde": 0.05, "forecast_users": 1000, "baseline_rate": 0.06, "impressions_per_user": 10.0}
    cases = [
        ({**base}, "design_effect"),  # neither historical nor a design effect
        ({**base, "design_effect": 1.7, "relative_mde": 0.0}, "relative_mde"),
        ({**base, "design_effect": 1.7, "baseline_rate": 1.2}, "baseline_rate"),
        ({**base, "design_effect": 1.7, "power": 1.0}, "power"),
        ({**base, "design_effect": 1.7, "forecast_users": -1}, "forecast_users"),
        ({**base, "design_effect": -1.0}, "design_effect"),
        ({**base, "design_effect": 1.7, "alpha_win": 0.6}, "alpha_win"),
    ]
    for kwargs, name in cases:
        with pytest.raises(ValueError, match=name):
            power_gate(**kwargs)  # type: ignore[arg-type]


# --- phase changes ---------------------------------------------------------------------------------------


def _phase(**overrides: object) -> dict[str, object]:
    row: dict[str, object] = {
        "experiment_id": "exp-1",
        "salt": "exp-1:1",
        "split": 0.5,
        "coverage": 0.05,
        "control_model": "prod",
        "treatment_model": "cand",
        "started_at": datetime(2026, 1, 1, tzinfo=UTC),
    }
    return {**row, **overrides}


def test_split_change_within_a_phase_is_refused() -> None:
    old = _phase()
    with pytest.raises(ValueError, match=r"split changed from 0\.5 to 0\.3 within a phase"):
        validate_phase_change(old, _phase(split=0.3))
    # Why: the same salt with other weights moves enrolled users between arms.
    ids = list(range(20_000))
    before = assign_many(ids, "exp-1:1", split=0.5, coverage=1.0)
    after = assign_many(ids, "exp-1:1", split=0.3, coverage=1.0)
    assert (before != after).any()
    # A new phase (new salt) may change the split; the analysis restarts from it.
    validate_phase_change(old, _phase(salt="exp-1:2", split=0.3))


def test_coverage_may_only_ramp_up_within_a_phase() -> None:
    validate_phase_change(_phase(coverage=0.05), _phase(coverage=0.5))
    validate_phase_change(_phase(coverage=0.5), _phase(coverage=0.5))
    with pytest.raises(ValueError, match="coverage decreased"):
        validate_phase_change(_phase(coverage=0.5), _phase(coverage=0.05))
    validate_phase_change(_phase(coverage=0.5), _phase(salt="exp-1:2", coverage=0.05))


def test_model_changes_within_a_phase_are_refused_and_bad_configs_rejected() -> None:
    with pytest.raises(ValueError, match="treatment_model"):
        validate_phase_change(_phase(), _phase(treatment_model="other"))
    with pytest.raises(ValueError, match="control_model"):
        validate_phase_change(_phase(), _phase(control_model="other"))
    bad = [
        ({k: v for k, v in _phase().items() if k != "split"}, "split"),
        (_phase(salt=""), "salt"),
        (_phase(split=1.0), "split"),
        (_phase(coverage=1.5), "coverage"),
    ]
    for config, name in bad:
        with pytest.raises(ValueError, match=name):
            validate_phase_change(_phase(), config)
