"""Guardrail metrics: per-user means that the candidate must not make worse.

The treatment can move the engagement *rate* by changing its denominator (fewer impressions, fewer posts),
so the promotion also requires that impressions/user, posts/user and engagements/user did not drop by
more than a pre-registered relative margin. Each guardrail is a pure function of per-arm
:class:`~finetune_assets.experiments.stats.statistics.MeanSums` (n, Σx, Σx²):

* final look: a one-sided **non-inferiority** test at ``alpha`` (default 0.025) on the relative
  difference (μ_T − μ_C)/|μ_C|, Welch-t interval with the GrowthBook delta-method variance; it
  passes when the bound clears −margin. No α correction across guardrails (Schultzberg et al.): each
  must pass on its own, which costs power, not false promotions.
* hourly: a one-sided always-valid **harm** bound at α_harm/K (Bonferroni over the K guardrails).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from finetune_assets.experiments.stats.confidence_sequences import OneSidedInterval, one_sided_confidence_sequence
from finetune_assets.experiments.stats.effects import EffectEstimate, welch_relative
from finetune_assets.experiments.stats.statistics import ArmSums, MeanSums
from finetune_assets.reporting.formatting import signed_pct

DEFAULT_MARGIN = 0.05
"""Default non-inferiority margin: the candidate may be at most 5 % (relative) worse on a guardrail.

A tighter margin costs power: at 20k users per arm a 2 % margin on impressions/user passes only ≈ 80 % of
the time when nothing changed (the promotion power at +5 % drops from 0.85 to 0.70); pick margins with
the traffic in mind (Schultzberg et al.: correct the power, not α)."""
MIN_USERS_FOR_GUARDRAIL = 2


@dataclass(frozen=True)
class Guardrail:
    """One guardrail metric with its data: per-user sums of both arms and the tolerated margin.

    ``margin`` is relative (0.02 = at most 2 % worse). ``higher_is_better`` says which direction is harm:
    True for impressions/user, posts/user, engagements/user; False for e.g. reports/user.
    """

    name: str
    control: MeanSums
    treatment: MeanSums
    margin: float = DEFAULT_MARGIN
    higher_is_better: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"guardrail name must be a non-empty string, got {self.name!r}")
        if not (isinstance(self.margin, int | float) and 0.0 <= self.margin < 1.0):
            raise ValueError(f"margin of guardrail {self.name!r} must be in [0, 1), got {self.margin!r}")

    def effect(self, *, alpha: float = 0.05) -> EffectEstimate | None:
        """Relative difference (μ_T − μ_C)/|μ_C| with its two-sided Welch interval; None without data."""
        c, t = self.control, self.treatment
        if min(c.n, t.n) < MIN_USERS_FOR_GUARDRAIL or c.total == 0:
            return None
        return welch_relative(c.mean, c.variance, c.n, t.mean, t.variance, t.n, alpha)


def default_guardrails(
    control: ArmSums,
    treatment: ArmSums,
    *,
    margin: float = DEFAULT_MARGIN,
    posts: tuple[MeanSums, MeanSums] | None = None,
) -> tuple[Guardrail, ...]:
    """impressions/user and engagements/user from the primary's sums, plus posts/user when the store
    provides per-user post counts (``posts`` = (control, treatment) MeanSums of posts per user)."""
    guardrails = [
        Guardrail("impressions per user", control.impressions_per_user(), treatment.impressions_per_user(), margin),
        Guardrail("engagements per user", control.engagements_per_user(), treatment.engagements_per_user(), margin),
    ]
    if posts is not None:
        guardrails.append(Guardrail("posts per user", posts[0], posts[1], margin))
    return tuple(guardrails)


@dataclass(frozen=True)
class NonInferiorityResult:
    """Final-look non-inferiority of one guardrail; ``passed`` None-safe: no data counts as failed."""

    name: str
    margin: float
    alpha: float
    higher_is_better: bool
    effect: float | None
    bound: float | None
    """Lower bound of the one-sided (1 − alpha) interval (upper bound when lower is better)."""
    passed: bool
    message: str


def non_inferiority(guardrail: Guardrail, *, alpha: float = 0.025) -> NonInferiorityResult:
    """One-sided non-inferiority test: H₀ "worse by ≥ margin" is rejected when the (1 − alpha) bound of
    the relative difference clears −margin (+margin when lower is better). ≡ the two-sided (1 − 2α)
    interval's near end, so the default 0.025 matches the 95 % CI of the promotion test."""
    if not (isinstance(alpha, int | float) and 0.0 < alpha < 0.5):
        raise ValueError(f"alpha must be in (0, 0.5), got {alpha!r}")
    g = guardrail
    est = g.effect(alpha=2.0 * alpha)
    if est is None:
        return NonInferiorityResult(
            g.name,
            g.margin,
            alpha,
            g.higher_is_better,
            None,
            None,
            False,
            f"{g.name}: not enough data for the non-inferiority test "
            f"({g.control.n:,} control / {g.treatment.n:,} treatment users)",
        )
    if g.higher_is_better:
        bound, passed = est.ci_low, est.ci_low > -g.margin
        limit = f"> {signed_pct(-g.margin)}"
    else:
        bound, passed = est.ci_high, est.ci_high < g.margin
        limit = f"< {signed_pct(g.margin)}"
    level = f"{(1 - alpha) * 100:g}%"
    side = "lower" if g.higher_is_better else "upper"
    verdict = "within the margin" if passed else "may be worse than the margin allows"
    message = (
        f"{g.name}: {signed_pct(est.expected)} ({level} {side} bound {signed_pct(bound)}, needs {limit}): {verdict} "
        f"({g.treatment.mean:.3g} vs {g.control.mean:.3g} per user)"
    )
    return NonInferiorityResult(g.name, g.margin, alpha, g.higher_is_better, est.expected, bound, passed, message)


@dataclass(frozen=True)
class HarmCheck:
    """One always-valid harm check (primary or guardrail) at one hourly look.

    ``interval`` is the one-sided CS in the *harm* orientation (an effect where smaller is worse), so
    harm ⇔ ``interval.upper < 0``; for a lower-is-better guardrail it is the CS of the negated effect.
    """

    name: str
    alpha: float
    interval: OneSidedInterval | None
    harm: bool
    message: str

    @property
    def upper_bound(self) -> float | None:
        return None if self.interval is None else self.interval.upper


def harm_check(
    name: str,
    expected: float | None,
    se: float | None,
    n_total: int,
    *,
    alpha: float,
    n_star: float,
    higher_is_better: bool = True,
) -> HarmCheck:
    """Harm ⇔ the one-sided always-valid CS excludes 0 on the bad side.

    For higher-is-better effects (the primary lift): upper bound of (−∞, Δ̂ + hw] below 0. For
    lower-is-better ones the effect is negated first, i.e. the lower bound Δ̂ − hw is above 0.
    """
    if expected is None or se is None or not math.isfinite(expected) or not math.isfinite(se) or n_total < 1:
        return HarmCheck(name, alpha, None, False, f"{name}: not measurable yet")
    sign = 1.0 if higher_is_better else -1.0
    interval = one_sided_confidence_sequence(sign * expected, se, n_total, n_star=n_star, alpha=alpha, side="lesser")
    harm = interval.excludes(0.0)
    verdict = "significantly worse" if harm else "no evidence of harm"
    which = "upper" if higher_is_better else "lower"
    message = (
        f"{name}: {signed_pct(expected)}, always-valid {(1 - alpha) * 100:.4g}% {which} bound "
        f"{signed_pct(sign * interval.upper)}: {verdict}"
    )
    return HarmCheck(name, alpha, interval, harm, message)


def guardrail_harm_check(guardrail: Guardrail, *, alpha: float, n_star: float) -> HarmCheck:
    """Hourly harm check of a guardrail (call it with α_harm/K for K guardrails)."""
    est = guardrail.effect()
    n_total = guardrail.control.n + guardrail.treatment.n
    return harm_check(
        guardrail.name,
        None if est is None else est.expected,
        None if est is None else est.se,
        n_total,
        alpha=alpha,
        n_star=n_star,
        higher_is_better=guardrail.higher_is_better,
    )


__all__ = [
    "DEFAULT_MARGIN",
    "Guardrail",
    "HarmCheck",
    "NonInferiorityResult",
    "default_guardrails",
    "guardrail_harm_check",
    "harm_check",
    "non_inferiority",
]
