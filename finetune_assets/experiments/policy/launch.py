"""Checks before and during a launch: the pre-launch power gate and the phase-change validator.

* :func:`power_gate` — before the start: is the forecast traffic enough for the target MDE?
* :func:`validate_phase_change` — a split (weight) change inside a phase moves users between arms and is
  refused; ramping coverage up is the only safe change without a new salt, because assignment buckets
  are nested in coverage (a user enrolled at a lower coverage stays enrolled, in the same arm).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from scipy import special

from finetune_assets.experiments.policy.decision import ALPHA_WIN, check_level
from finetune_assets.experiments.stats.statistics import ArmSums
from finetune_assets.reporting.formatting import signed_pct


@dataclass(frozen=True)
class PowerGateResult:
    """Is the forecast traffic enough? ``ok`` False = under-powered; ``reason`` says what to do."""

    ok: bool
    reason: str
    baseline_rate: float
    relative_mde: float
    design_effect: float
    impressions_per_user: float
    alpha_win: float
    power: float
    split: float
    required_users: int
    """Total users over both arms needed at the end of the test."""
    required_users_per_arm: tuple[int, int]
    required_impressions_per_arm: tuple[int, int]
    forecast_users: int
    power_at_forecast: float
    mde_at_forecast: float | None
    """Smallest relative lift detectable with ``power`` at the forecast traffic; None if none is."""


def estimate_design_effect(historical: ArmSums) -> float:
    """DE = Var_delta(R̂) / Var_iid(R̂) from historical per-user (M, D) sums."""
    rate = historical.rate
    if not 0.0 < rate < 1.0:
        raise ValueError(f"historical engagement rate must be in (0, 1), got {rate!r}")
    iid = rate * (1.0 - rate) / historical.sum_d
    return historical.ratio_variance() / iid


def _power(p1: float, mde: float, de: float, imps_c: float, imps_t: float, z_alpha: float) -> float:
    p2 = p1 * (1.0 + mde)
    se = math.sqrt(de * (p1 * (1.0 - p1) / imps_c + p2 * (1.0 - p2) / imps_t))
    return float(special.ndtr(abs(p2 - p1) / se - z_alpha))


def power_gate(
    *,
    relative_mde: float,
    forecast_users: int,
    historical: ArmSums | None = None,
    baseline_rate: float | None = None,
    design_effect: float | None = None,
    impressions_per_user: float | None = None,
    alpha_win: float = ALPHA_WIN,
    power: float = 0.8,
    split: float = 0.5,
) -> PowerGateResult:
    """Pre-launch power gate: can ``forecast_users`` (both arms, by the planned end — the same number as
    the monitor's N*) detect ``relative_mde`` with ``power`` at one-sided ``alpha_win``?

    Either ``historical`` per-user sums (from which DE, baseline rate and impressions/user are estimated;
    explicit values override them) or ``baseline_rate`` + ``design_effect`` + ``impressions_per_user``.
    Per arm: n = (z_{1−α} + z_power)² · [p₁(1−p₁) + p₂(1−p₂)] / (p₂ − p₁)² · DE impressions at a 50/50
    split; an unequal split s needs (p₁q₁/(1−s) + p₂q₂/s) instead of 2·(p₁q₁ + p₂q₂) over the total.
    """
    check_level("alpha_win", alpha_win)
    if not (isinstance(power, int | float) and 0.0 < power < 1.0):
        raise ValueError(f"power must be in (0, 1), got {power!r}")
    if not (isinstance(split, int | float) and 0.0 < split < 1.0):
        raise ValueError(f"split must be in (0, 1), got {split!r}")
    if isinstance(forecast_users, bool) or not isinstance(forecast_users, int) or forecast_users < 0:
        raise ValueError(f"forecast_users must be an int >= 0, got {forecast_users!r}")
    if historical is not None:
        baseline_rate = historical.rate if baseline_rate is None else baseline_rate
        design_effect = estimate_design_effect(historical) if design_effect is None else design_effect
        if impressions_per_user is None:
            if historical.n < 1:
                raise ValueError("historical has no users: impressions_per_user cannot be estimated")
            impressions_per_user = historical.sum_d / historical.n
    if baseline_rate is None or design_effect is None or impressions_per_user is None:
        raise ValueError(
            "give historical per-user sums, or all of baseline_rate, design_effect and impressions_per_user"
        )
    if not 0.0 < baseline_rate < 1.0:
        raise ValueError(f"baseline_rate must be in (0, 1), got {baseline_rate!r}")
    if not (math.isfinite(design_effect) and design_effect > 0):
        raise ValueError(f"design_effect must be > 0, got {design_effect!r}")
    if not (math.isfinite(impressions_per_user) and impressions_per_user > 0):
        raise ValueError(f"impressions_per_user must be > 0, got {impressions_per_user!r}")
    p1 = float(baseline_rate)
    p2 = p1 * (1.0 + relative_mde)
    if relative_mde == 0 or not 0.0 < p2 < 1.0:
        raise ValueError(f"relative_mde must be non-zero and keep the rate in (0, 1), got {relative_mde!r}")

    z_alpha = float(special.ndtri(1.0 - alpha_win))
    z_sum = z_alpha + float(special.ndtri(power))
    de, ipu, s = float(design_effect), float(impressions_per_user), float(split)
    total_impressions = z_sum**2 * de * (p1 * (1 - p1) / (1 - s) + p2 * (1 - p2) / s) / (p2 - p1) ** 2
    required_users = math.ceil(total_impressions / ipu)
    per_arm_users = (math.ceil(required_users * (1 - s)), math.ceil(required_users * s))
    per_arm_imps = (math.ceil(total_impressions * (1 - s)), math.ceil(total_impressions * s))

    imps_c, imps_t = forecast_users * (1 - s) * ipu, forecast_users * s * ipu
    if forecast_users > 0:
        achieved = _power(p1, relative_mde, de, imps_c, imps_t, z_alpha)
        sign = 1.0 if relative_mde > 0 else -1.0
        top = (1.0 / p1 - 1.0) * 0.999 if sign > 0 else 0.999

        def gap(m: float) -> float:
            return _power(p1, sign * m, de, imps_c, imps_t, z_alpha) - power

        from scipy import optimize  # ~0.5 s to import: only where a launch needs it, not at definitions load

        mde_at: float | None = None
        if gap(top) > 0:
            mde_at = sign * float(optimize.brentq(gap, 1e-9, top, xtol=1e-9))
    else:
        achieved, mde_at = 0.0, None

    ok = forecast_users >= required_users
    need = (
        f"a {signed_pct(relative_mde)} relative change of the {p1:.2%} engagement rate needs {required_users:,} users "
        f"({per_arm_users[0]:,} control / {per_arm_users[1]:,} treatment at {ipu:.3g} impressions per user, "
        f"design effect {de:.2f}) for {power:.0%} power at one-sided α {alpha_win:g}"
    )
    if ok:
        reason = f"enough traffic: {need}; {forecast_users:,} are forecast (power {achieved:.0%})"
    else:
        detectable = f"{signed_pct(mde_at)}" if mde_at is not None else "none"
        reason = (
            f"under-powered: {need}, but only {forecast_users:,} are forecast (power {achieved:.0%}; detectable "
            f"change at {power:.0%} power: {detectable}). Raise the MDE or the coverage, run longer, or accept "
            "the lower power explicitly in the run config"
        )
    return PowerGateResult(
        ok,
        reason,
        p1,
        float(relative_mde),
        de,
        ipu,
        float(alpha_win),
        float(power),
        s,
        required_users,
        per_arm_users,
        per_arm_imps,
        forecast_users,
        achieved,
        mde_at,
    )


_FROZEN_WITHIN_PHASE = ("split", "control_model", "treatment_model")


def validate_phase_change(old: Mapping[str, Any], new: Mapping[str, Any]) -> None:
    """Refuse an unsafe experiment config change; return None when it is allowed.

    ``old``/``new`` are experiment configs with at least ``salt``, ``split`` and ``coverage`` (an
    ``ft_experiments`` row works). A new salt is a new phase: anything may change and the analysis
    restarts from it. With the same salt (same phase): ``split`` must not change (weights move users
    between arms), nor ``control_model``/``treatment_model`` when present, and ``coverage`` may only
    grow (ramping up adds users; ramping down drops enrolled ones). Raises ValueError naming the field.
    """
    for name, config in (("old", old), ("new", new)):
        for key in ("salt", "split", "coverage"):
            if key not in config:
                raise ValueError(f"{name} config has no {key!r}")
        if not isinstance(config["salt"], str) or not config["salt"]:
            raise ValueError(f"salt of the {name} config must be a non-empty string, got {config['salt']!r}")
        split, coverage = config["split"], config["coverage"]
        if not (isinstance(split, int | float) and 0.0 < split < 1.0):
            raise ValueError(f"split of the {name} config must be in (0, 1), got {split!r}")
        if not (isinstance(coverage, int | float) and 0.0 <= coverage <= 1.0):
            raise ValueError(f"coverage of the {name} config must be in [0, 1], got {coverage!r}")
    if new["salt"] != old["salt"]:
        return
    for key in _FROZEN_WITHIN_PHASE:
        if key in old and key in new and old[key] != new[key]:
            raise ValueError(
                f"{key} changed from {old[key]!r} to {new[key]!r} within a phase (salt {old['salt']!r}): "
                f"changing {key} moves users between arms or changes what they see mid-test; start a new phase "
                "with a new salt (the analysis restarts from it)"
            )
    if new["coverage"] < old["coverage"]:
        raise ValueError(
            f"coverage decreased from {old['coverage']!r} to {new['coverage']!r} within a phase (salt "
            f"{old['salt']!r}): enrolled users would drop out mid-test; only ramp coverage up, or start a new phase "
            "with a new salt"
        )


__all__ = [
    "PowerGateResult",
    "estimate_design_effect",
    "power_gate",
    "validate_phase_change",
]
