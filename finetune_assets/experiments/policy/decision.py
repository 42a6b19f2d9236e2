"""The final promotion decision, the pre-launch power gate and the phase-change validator.

* :func:`final_decision` — read once at the end of the test (reference ab-testing.md §1 step 3): promote
  only if the fixed-horizon one-sided test on the relative lift passes at α_win = 0.025 (≡ the lower
  bound of the two-sided 95 % CI > 0), no harm alarm happened, SRM passes (final χ² and the sequential
  test), every guardrail passes non-inferiority and there is enough, complete data. Otherwise keep
  production, or mark the experiment invalid on SRM.
* :func:`power_gate` — before the start: is the forecast traffic enough for the target MDE (§1, §6)?
* :func:`validate_phase_change` — a split (weight) change inside a phase moves users between arms and is
  refused; ramping coverage up is the only safe change without a new salt (§1, pitfall 10, T14).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from scipy import special

from finetune_assets.experiments.policy.guardrails import Guardrail, NonInferiorityResult, non_inferiority
from finetune_assets.experiments.policy.monitor import MIN_ENGAGEMENTS_PER_ARM, MIN_USERS_PER_ARM, MonitorResult
from finetune_assets.experiments.stats.sequential import SEQUENTIAL_SRM_ALPHA
from finetune_assets.experiments.stats.statistics import (
    SRM_THRESHOLD,
    ArmSums,
    LiftEstimate,
    SrmResult,
    check_srm,
    relative_lift,
)
from finetune_assets.reporting.formatting import signed_pct

ALPHA_WIN = 0.025
"""One-sided level of the promotion test (≡ two-sided 95 % CI lower bound > 0)."""

FinalAction = Literal["promote", "keep", "invalid"]
FinalCode = Literal[
    "win", "srm", "harm_alarm", "windows_open", "too_few_users", "no_data", "not_significant", "worse", "guardrail"
]


def _check_level(name: str, value: float, upper: float = 0.5) -> None:
    if not (isinstance(value, int | float) and 0.0 < value < upper):
        raise ValueError(f"{name} must be in (0, {upper:g}), got {value!r}")


@dataclass(frozen=True)
class Check:
    """One promotion condition, for the asset's check results and the report."""

    name: str
    passed: bool
    message: str


@dataclass(frozen=True)
class FinalDecision:
    """Promote / keep / invalid, the reason in words, and every number behind it.

    ``status`` maps onto ``ft_experiments.status`` (``"decided"`` or ``"invalid"``); ``store_decision``
    onto ``ft_experiments.decision`` (``"promote"`` or ``"keep"``; an invalid experiment keeps production).
    """

    action: FinalAction
    code: FinalCode
    reason: str
    n_control: int
    n_treatment: int
    lift: LiftEstimate | None
    srm: SrmResult
    srm_sequential_p: float
    guardrails: tuple[NonInferiorityResult, ...]
    checks: tuple[Check, ...]

    @property
    def status(self) -> str:
        return "invalid" if self.action == "invalid" else "decided"

    @property
    def store_decision(self) -> str:
        return "promote" if self.action == "promote" else "keep"

    def to_details(self) -> dict[str, Any]:
        """JSON-safe summary for ``decide_experiment(details=...)`` and asset metadata."""
        lift = self.lift
        return {
            "action": self.action,
            "code": self.code,
            "reason": self.reason,
            "users": {"control": self.n_control, "treatment": self.n_treatment},
            "lift": lift.lift if lift else None,
            "ci_low": lift.ci_low if lift else None,
            "ci_high": lift.ci_high if lift else None,
            "p_value": lift.p_value if lift else None,
            "control_rate": lift.control_rate if lift else None,
            "treatment_rate": lift.treatment_rate if lift else None,
            "srm_p_value": self.srm.p_value,
            "srm_sequential_p": self.srm_sequential_p,
            "guardrails": {
                g.name: {"effect": g.effect, "bound": g.bound, "margin": g.margin, "passed": g.passed}
                for g in self.guardrails
            },
            "checks": {c.name: c.passed for c in self.checks},
        }


def final_decision(
    control: ArmSums,
    treatment: ArmSums,
    *,
    split: float = 0.5,
    guardrails: Sequence[Guardrail] = (),
    exposures: tuple[int, int] | None = None,
    harm_alarm: bool | MonitorResult = False,
    srm_sequential_p: float = 1.0,
    alpha_win: float = ALPHA_WIN,
    ni_alpha: float = 0.025,
    srm_threshold: float = SRM_THRESHOLD,
    srm_sequential_alpha: float = SEQUENTIAL_SRM_ALPHA,
    min_users_per_arm: int = MIN_USERS_PER_ARM,
    min_engagements_per_arm: int = MIN_ENGAGEMENTS_PER_ARM,
    windows_complete: bool = True,
) -> FinalDecision:
    """The end-of-test decision (§1 step 3); see the module docstring.

    Args:
        control, treatment: per-arm sums over the whole (phase of the) test.
        split: configured treatment share; SRM is judged against it.
        guardrails: non-inferiority metrics with their margins (:func:`~.guardrails.default_guardrails`).
        exposures: exposed users per arm for SRM; default the arms' ``n``.
        harm_alarm: True if the hourly monitor ever said ``stop_harm``; a :class:`MonitorResult` (the
            last look) also works.
        srm_sequential_p: the monitor's persisted ``srm_running_min_p`` (1.0 if never monitored).
        alpha_win: one-sided level of the promotion test (0.025 ≡ 95 % two-sided CI lower bound > 0).
        ni_alpha: one-sided level of each guardrail's non-inferiority test (no multiplicity correction).
        windows_complete: every impression's attribution window has closed (pitfall 5).
    """
    _check_level("alpha_win", alpha_win)
    _check_level("ni_alpha", ni_alpha)
    _check_level("srm_threshold", srm_threshold, 1.0)
    if not (isinstance(split, int | float) and 0.0 < split < 1.0):
        raise ValueError(f"split must be in (0, 1), got {split!r}")
    if not (isinstance(srm_sequential_p, int | float) and 0.0 <= srm_sequential_p <= 1.0):
        raise ValueError(f"srm_sequential_p must be in [0, 1], got {srm_sequential_p!r}")
    if isinstance(min_users_per_arm, bool) or not isinstance(min_users_per_arm, int) or min_users_per_arm < 2:
        raise ValueError(f"min_users_per_arm must be an int >= 2, got {min_users_per_arm!r}")
    if isinstance(harm_alarm, MonitorResult):
        harm_alarm = harm_alarm.action == "stop_harm"

    n_c, n_t = int(control.n), int(treatment.n)
    counts = exposures if exposures is not None else (n_c, n_t)
    srm = check_srm(counts, [1.0 - split, split], threshold=srm_threshold)
    srm_seq_alarm = srm_sequential_p < srm_sequential_alpha
    enough_users = min(n_c, n_t) >= min_users_per_arm and srm.status != "not_enough_traffic"
    enough_engagements = min(control.sum_m, treatment.sum_m) >= min_engagements_per_arm
    measurable = min(n_c, n_t) >= 2 and control.sum_d > 0 and treatment.sum_d > 0 and control.sum_m > 0
    lift = relative_lift(control, treatment, alpha=2.0 * alpha_win) if measurable else None
    ni = tuple(non_inferiority(g, alpha=ni_alpha) for g in guardrails)
    level = f"{(1 - 2 * alpha_win) * 100:g}%"

    checks = [
        Check("srm", srm.status != "mismatch", srm.message),
        Check(
            "sequential_srm",
            not srm_seq_alarm,
            f"sequential SRM anytime p={srm_sequential_p:.2g}"
            + (f" < {srm_sequential_alpha:g}: mismatch during the test" if srm_seq_alarm else ": no alarm"),
        ),
        Check("no_harm_alarm", not harm_alarm, "the hourly harm monitor " + ("stopped it" if harm_alarm else "ok")),
        Check(
            "windows_complete", windows_complete, "attribution windows " + ("closed" if windows_complete else "open")
        ),
        Check(
            "enough_data",
            enough_users and enough_engagements,
            f"{n_c:,} control / {n_t:,} treatment users, {control.sum_m:,.0f} / {treatment.sum_m:,.0f} engagements "
            f"(needs {min_users_per_arm:,} users and {min_engagements_per_arm:,} engagements per arm)",
        ),
    ]
    if lift is not None:
        checks.append(
            Check(
                "primary_win",
                lift.ci_low > 0,
                f"engagement rate lift {signed_pct(lift.lift)} "
                f"[{signed_pct(lift.ci_low)}, {signed_pct(lift.ci_high)}] ({level} CI)",
            )
        )
    checks += [Check(f"guardrail:{g.name}", g.passed, g.message) for g in ni]

    def decision(action: FinalAction, code: FinalCode, reason: str) -> FinalDecision:
        return FinalDecision(action, code, reason, n_c, n_t, lift, srm, float(srm_sequential_p), ni, tuple(checks))

    expected_split = f"{(1 - split) * 100:.0f}/{split * 100:.0f}"
    shown = f"control {counts[0]:,} vs treatment {counts[1]:,} users, expected {expected_split}"
    if srm.status == "mismatch":
        return decision(
            "invalid",
            "srm",
            f"invalid — do not promote: sample ratio mismatch (p={srm.p_value:.2g} < {srm_threshold:g}; {shown}). "
            "Users were lost or mis-assigned, so no number from this test can be trusted; investigate and "
            "rerun with a new salt",
        )
    if srm_seq_alarm:
        return decision(
            "invalid",
            "srm",
            f"invalid — do not promote: the sequential SRM check alarmed during the test (anytime p="
            f"{srm_sequential_p:.2g} < {srm_sequential_alpha:g}; now {shown}); investigate and rerun with a new salt",
        )
    if harm_alarm:
        return decision(
            "keep",
            "harm_alarm",
            "keep production: the hourly monitor stopped the test because the candidate was significantly worse",
        )
    if not windows_complete:
        return decision(
            "keep",
            "windows_open",
            "keep production for now: some impressions are still inside their attribution window; "
            "decide once every window has closed",
        )
    if not enough_users or not enough_engagements:
        return decision(
            "keep",
            "too_few_users",
            f"keep production: not enough data to decide ({checks[4].message})",
        )
    if lift is None:
        return decision(
            "keep",
            "no_data",
            f"keep production: no measurable engagement rate (control {control.sum_m:,.0f}/{control.sum_d:,.0f}, "
            f"treatment {treatment.sum_m:,.0f}/{treatment.sum_d:,.0f} engagements/impressions)",
        )
    summary = (
        f"the candidate changed the engagement rate by {signed_pct(lift.lift)} "
        f"({level} CI {signed_pct(lift.ci_low)} to "
        f"{signed_pct(lift.ci_high)}; {lift.treatment_rate:.2%} vs {lift.control_rate:.2%})"
    )
    if lift.ci_high < 0:
        return decision("keep", "worse", f"keep production: {summary}, significantly worse")
    if lift.ci_low <= 0:
        return decision(
            "keep",
            "not_significant",
            f"keep production: {summary}, not a significant improvement (one-sided α {alpha_win:g})",
        )
    failed = [g for g in ni if not g.passed]
    if failed:
        return decision(
            "keep",
            "guardrail",
            f"keep production: {summary}, but a guardrail failed its non-inferiority test — "
            + "; ".join(g.message for g in failed),
        )
    passed = "; ".join(g.message for g in ni)
    tail = f"; guardrails — {passed}" if ni else ""
    return decision(
        "promote",
        "win",
        f"promote the candidate: {summary}, a significant improvement; no harm alarm, no sample ratio mismatch{tail}",
    )


# --- pre-launch power gate (§1, §6) ---------------------------------------------------------------------


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
    """DE = Var_delta(R̂) / Var_iid(R̂) from historical per-user (M, D) sums (§1 "Pre-launch power gate")."""
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
    Per arm (§6): n = (z_{1−α} + z_power)² · [p₁(1−p₁) + p₂(1−p₂)] / (p₂ − p₁)² · DE impressions at a 50/50
    split; an unequal split s needs (p₁q₁/(1−s) + p₂q₂/s) instead of 2·(p₁q₁ + p₂q₂) over the total.
    """
    _check_level("alpha_win", alpha_win)
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


# --- phase changes (§1, pitfall 10, T14) -----------------------------------------------------------------

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
    "ALPHA_WIN",
    "Check",
    "FinalAction",
    "FinalCode",
    "FinalDecision",
    "PowerGateResult",
    "estimate_design_effect",
    "final_decision",
    "power_gate",
    "validate_phase_change",
]
