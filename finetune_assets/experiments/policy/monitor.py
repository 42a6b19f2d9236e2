"""The hourly harm and SRM monitor: the only looks taken before the final decision.

Call :func:`monitor` once an hour with the cumulative per-arm sums. It may only *stop* the experiment:

* ``stop_srm`` — the sequential SRM test (Dirichlet–multinomial Bayes factor, running-minimum anytime
  p < 0.001) says the arm sizes do not match the configured split: the experiment is invalid.
* ``stop_harm`` — the one-sided always-valid CS (α_harm = 0.025) shows the candidate lowers the
  engagement rate (upper bound of the relative lift < 0), or a guardrail got worse (α_harm/K each).
* ``continue`` — otherwise, and always before the minimums (≥ 6 h, and for harm ≥ 200 users and ≥ 25
  engagements per arm): early-hour ratio estimates are unstable.

Wins are never declared here: the promotion test is read once at the end (:mod:`.decision`). Every
statistic peeked at is always-valid, so hourly peeking inflates neither error rate. The function is
pure: the only state carried between looks is the SRM running minimum (``srm_previous_p``), which the
caller persists from ``result.srm.running_min_p``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from finetune_assets.experiments.policy.guardrails import Guardrail, HarmCheck, guardrail_harm_check, harm_check
from finetune_assets.experiments.stats.confidence_sequences import cs_half_width
from finetune_assets.experiments.stats.sequential import SEQUENTIAL_SRM_ALPHA, SequentialSrmResult, sequential_srm
from finetune_assets.experiments.stats.srm import SRM_THRESHOLD, SrmResult, check_srm
from finetune_assets.experiments.stats.statistics import ArmSums, LiftEstimate, relative_lift, relative_lift_arrays

ALPHA_HARM = 0.025
"""One-sided level of the harm monitor on the primary; guardrails share it (α_harm/K each)."""
MIN_HOURS = 6.0
MIN_USERS_PER_ARM = 200
MIN_ENGAGEMENTS_PER_ARM = 25
PRIMARY_NAME = "engagement rate"

MonitorAction = Literal["continue", "stop_harm", "stop_srm"]


@dataclass(frozen=True)
class MonitorResult:
    """One hourly look: the action, a sentence for people, and the numbers behind it."""

    action: MonitorAction
    reason: str
    hours_elapsed: float
    ready: bool
    """Minimums met (hours, users and engagements per arm): a harm stop is possible."""
    n_control: int
    n_treatment: int
    lift: LiftEstimate | None
    primary: HarmCheck
    guardrails: tuple[HarmCheck, ...]
    srm: SequentialSrmResult
    srm_chi2: SrmResult
    warnings: tuple[str, ...] = ()

    @property
    def stop(self) -> bool:
        return self.action != "continue"

    def to_details(self) -> dict[str, Any]:
        """JSON-safe summary for the store / asset metadata (persist ``srm_running_min_p``)."""

        def num(x: float | None) -> float | None:
            return None if x is None or not math.isfinite(x) else float(x)

        return {
            "action": self.action,
            "reason": self.reason,
            "hours_elapsed": self.hours_elapsed,
            "ready": self.ready,
            "users": {"control": self.n_control, "treatment": self.n_treatment},
            "lift": num(self.lift.lift) if self.lift else None,
            "lift_se": num(self.lift.se) if self.lift else None,
            "harm_upper_bound": num(self.primary.upper_bound),
            "harm": self.primary.harm,
            "guardrails": {
                g.name: {"harm": g.harm, "upper_bound": num(g.upper_bound), "alpha": g.alpha} for g in self.guardrails
            },
            "srm_sequential_p": self.srm.p_value,
            "srm_running_min_p": self.srm.running_min_p,
            "srm_alarm": self.srm.alarm,
            "srm_chi2_p": self.srm_chi2.p_value,
            "warnings": list(self.warnings),
        }


def _check_positive(name: str, value: float) -> None:
    if isinstance(value, bool) or not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def minimums_met(
    control: ArmSums,
    treatment: ArmSums,
    hours_elapsed: float,
    *,
    min_hours: float = MIN_HOURS,
    min_users_per_arm: int = MIN_USERS_PER_ARM,
    min_engagements_per_arm: int = MIN_ENGAGEMENTS_PER_ARM,
) -> tuple[bool, str]:
    """(met, what is missing in words) for the "no decision before" rule."""
    missing = []
    if hours_elapsed < min_hours:
        missing.append(f"{min_hours:g} h of traffic (now {hours_elapsed:.1f} h)")
    if min(control.n, treatment.n) < min_users_per_arm:
        missing.append(f"{min_users_per_arm:,} users per arm (now {control.n:,} control / {treatment.n:,} treatment)")
    if min(control.sum_m, treatment.sum_m) < min_engagements_per_arm:
        missing.append(
            f"{min_engagements_per_arm:,} engagements per arm "
            f"(now {control.sum_m:,.0f} control / {treatment.sum_m:,.0f} treatment)"
        )
    return not missing, "; ".join(missing)


def monitor(
    control: ArmSums,
    treatment: ArmSums,
    *,
    hours_elapsed: float,
    n_star: float,
    alpha_harm: float = ALPHA_HARM,
    guardrails: Sequence[Guardrail] = (),
    split: float = 0.5,
    exposures: tuple[int, int] | None = None,
    srm_previous_p: float = 1.0,
    srm_alpha: float = SEQUENTIAL_SRM_ALPHA,
    min_hours: float = MIN_HOURS,
    min_users_per_arm: int = MIN_USERS_PER_ARM,
    min_engagements_per_arm: int = MIN_ENGAGEMENTS_PER_ARM,
) -> MonitorResult:
    """One hourly look of the harm and SRM monitor; see the module docstring for the rules.

    Args:
        control, treatment: cumulative per-arm sums of per-user engagements/impressions (store.arm_totals).
        hours_elapsed: hours since the (current phase of the) experiment started.
        n_star: forecast total users in both arms at the planned end (168 h), fixed before the start;
            the same value at every look (re-tuning ρ from the data would break the
            anytime-valid guarantee).
        alpha_harm: one-sided level of the primary harm test; each of the K guardrails gets alpha_harm/K.
        guardrails: per-user guardrail metrics (:func:`~.guardrails.default_guardrails`).
        split: configured treatment share of enrolled users.
        exposures: exposed users per arm (control, treatment) for SRM; default the arms' ``n``.
        srm_previous_p: the previous look's ``result.srm.running_min_p`` (1.0 at the first look).
    """
    _check_positive("hours_elapsed", hours_elapsed)
    if isinstance(n_star, bool) or not (isinstance(n_star, int | float) and math.isfinite(n_star) and n_star > 0):
        raise ValueError(f"n_star must be a finite number > 0 (forecast users in both arms at the end), got {n_star!r}")
    if not (isinstance(alpha_harm, int | float) and 0.0 < alpha_harm < 0.5):
        raise ValueError(f"alpha_harm must be in (0, 0.5), got {alpha_harm!r}")
    if not (isinstance(split, int | float) and 0.0 < split < 1.0):
        raise ValueError(f"split must be in (0, 1), got {split!r}")
    counts = exposures if exposures is not None else (int(control.n), int(treatment.n))
    weights = (1.0 - float(split), float(split))
    srm = sequential_srm(counts, weights, previous_p=srm_previous_p, alpha=srm_alpha)
    srm_chi2 = check_srm(counts, weights, threshold=SRM_THRESHOLD)
    warnings = []
    if srm_chi2.status == "mismatch":
        warnings.append(f"hourly χ² warning (not a stop rule): {srm_chi2.message}")

    ready, missing = minimums_met(
        control,
        treatment,
        hours_elapsed,
        min_hours=min_hours,
        min_users_per_arm=min_users_per_arm,
        min_engagements_per_arm=min_engagements_per_arm,
    )
    n_total = int(control.n) + int(treatment.n)
    lift: LiftEstimate | None = None
    if min(control.n, treatment.n) >= 2 and control.sum_d > 0 and treatment.sum_d > 0 and control.sum_m > 0:
        lift = relative_lift(control, treatment)
    primary = harm_check(
        PRIMARY_NAME,
        None if lift is None else lift.lift,
        None if lift is None else lift.se,
        n_total,
        alpha=alpha_harm,
        n_star=n_star,
    )
    alpha_guardrail = alpha_harm / max(1, len(guardrails))
    checks = tuple(guardrail_harm_check(g, alpha=alpha_guardrail, n_star=n_star) for g in guardrails)

    def result(action: MonitorAction, reason: str) -> MonitorResult:
        return MonitorResult(
            action,
            reason,
            float(hours_elapsed),
            ready,
            int(control.n),
            int(treatment.n),
            lift,
            primary,
            checks,
            srm,
            srm_chi2,
            tuple(warnings),
        )

    # SRM needs only the hours minimum: a lost arm never reaches the per-arm user minimum.
    if srm.alarm and hours_elapsed >= min_hours:
        return result("stop_srm", f"stop the experiment: {srm.message}. Fix it and restart with a new salt.")
    if not ready:
        return result("continue", f"keep running: too early for any decision, waiting for {missing}")
    harmed = [c for c in (primary, *checks) if c.harm]
    if harmed:
        details = "; ".join(c.message for c in harmed)
        return result(
            "stop_harm",
            f"stop and roll back to production after {hours_elapsed:.0f} h: the candidate is worse — {details} "
            f"({control.n:,} control / {treatment.n:,} treatment users)",
        )
    summary = primary.message if lift is not None else f"{PRIMARY_NAME}: not measurable yet"
    return result("continue", f"keep running: no harm so far after {hours_elapsed:.0f} h ({summary})")


def primary_harm_arrays(
    control: npt.ArrayLike,
    treatment: npt.ArrayLike,
    hours_elapsed: npt.ArrayLike,
    *,
    n_star: float,
    alpha_harm: float = ALPHA_HARM,
    min_hours: float = MIN_HOURS,
    min_users_per_arm: int = MIN_USERS_PER_ARM,
    min_engagements_per_arm: int = MIN_ENGAGEMENTS_PER_ARM,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
    """Vectorized replay of :func:`monitor`'s primary harm rule over many looks.

    ``control``/``treatment``: cumulative sums (n, ΣM, ΣD, ΣM², ΣD², ΣMD) on the last axis (e.g. runs ×
    hours × 6); ``hours_elapsed`` broadcasts against the leading axes. Returns (lift, upper bound of the
    one-sided always-valid CS, stop_harm mask). Same kernels as the scalar path (the tests cross-check
    them); used for the Monte-Carlo validation and to backfill a monitor history.
    """
    c = np.asarray(control, dtype=np.float64)
    t = np.asarray(treatment, dtype=np.float64)
    lift, se = relative_lift_arrays(c, t)
    n_total = c[..., 0] + t[..., 0]
    with np.errstate(invalid="ignore"):
        upper = lift + cs_half_width(se, np.maximum(n_total, 1.0), alpha=alpha_harm, n_star=n_star, one_sided=True)
        ready = (
            (np.asarray(hours_elapsed, dtype=np.float64) >= min_hours)
            & (np.minimum(c[..., 0], t[..., 0]) >= min_users_per_arm)
            & (np.minimum(c[..., 1], t[..., 1]) >= min_engagements_per_arm)
        )
        stop = ready & (upper < 0.0)
    return lift, upper, np.asarray(stop, dtype=np.bool_)


__all__ = [
    "ALPHA_HARM",
    "MIN_ENGAGEMENTS_PER_ARM",
    "MIN_HOURS",
    "MIN_USERS_PER_ARM",
    "MonitorAction",
    "MonitorResult",
    "minimums_met",
    "monitor",
    "primary_harm_arrays",
]
