"""The final promotion decision, read once at the end of the test.

:func:`final_decision` promotes only if the fixed-horizon one-sided test on the relative lift passes at
α_win = 0.025 (≡ the lower bound of the two-sided 95 % CI > 0), no harm alarm happened, SRM passes (final
χ² and the sequential test), every guardrail passes non-inferiority and there is enough, complete data.
Otherwise it keeps production, or marks the experiment invalid on SRM. The checks before and during a
launch (power gate, phase changes) are in :mod:`.launch`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from finetune_assets.experiments.policy.guardrails import Guardrail, NonInferiorityResult, non_inferiority
from finetune_assets.experiments.policy.monitor import MIN_ENGAGEMENTS_PER_ARM, MIN_USERS_PER_ARM, MonitorResult
from finetune_assets.experiments.stats.sequential import SEQUENTIAL_SRM_ALPHA
from finetune_assets.experiments.stats.srm import SRM_THRESHOLD, SrmResult, check_srm
from finetune_assets.experiments.stats.statistics import ArmSums, LiftEstimate, relative_lift
from finetune_assets.reporting.formatting import signed_pct

ALPHA_WIN = 0.025
"""One-sided level of the promotion test (≡ two-sided 95 % CI lower bound > 0)."""

FinalAction = Literal["promote", "keep", "invalid"]
FinalCode = Literal[
    "win", "srm", "harm_alarm", "windows_open", "too_few_users", "no_data", "not_significant", "worse", "guardrail"
]


def check_level(name: str, value: float, upper: float = 0.5) -> None:
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
    """The end-of-test decision; see the module docstring.

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
        windows_complete: every impression's attribution window has closed (until then the latest
            posts' engagements are undercounted).
    """
    check_level("alpha_win", alpha_win)
    check_level("ni_alpha", ni_alpha)
    check_level("srm_threshold", srm_threshold, 1.0)
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


__all__ = [
    "ALPHA_WIN",
    "Check",
    "FinalAction",
    "FinalCode",
    "FinalDecision",
    "check_level",
    "final_decision",
]
