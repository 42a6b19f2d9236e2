"""A/B analysis v1: delta-method relative lift, GrowthBook-style helpers, SRM and the promotion rule.

Everything is a pure function of per-arm sums (reference ab-testing.md §1 "Hourly statistics from
Postgres"): SQL computes n, ΣM, ΣD, ΣM², ΣD², ΣMD per arm, and each analysis here is O(1),
reproducible and unit-testable. M = engagements of a user, D = impressions of a user; the user is the
randomization unit, so the variance is computed over users, never over impressions (§2, pitfall 1).
numpy + scipy only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
from scipy import special

from finetune_assets.experiments.stats.sequential import cs_half_width, sequential_rho

SRM_THRESHOLD = 0.001
"""χ² p below this means sample ratio mismatch (GrowthBook/Eppo/Statsig default, §5)."""
SRM_MIN_COUNT_PER_ARM = 8
"""Fewer than ``k × 8`` users in k arms is "not enough traffic" for the SRM check (GrowthBook, §5)."""
DEFAULT_N_STAR = 5000
"""gbstats' default confidence-sequence tuning N*; set it to the forecast N at the decision (§3.1)."""


def _check_alpha(alpha: float, name: str = "alpha") -> None:
    if not (isinstance(alpha, int | float) and 0.0 < alpha < 1.0):
        raise ValueError(f"{name} must be in (0, 1), got {alpha!r}")


def _two_sided_normal_p(z: float) -> float:
    return float(2.0 * special.ndtr(-abs(z)))


@dataclass(frozen=True)
class ArmSums:
    """Sufficient statistics of one arm over its n users (what the SQL layer returns, §1)."""

    n: int
    sum_m: float
    sum_d: float
    sum_m2: float
    sum_d2: float
    sum_md: float

    def __post_init__(self) -> None:
        if isinstance(self.n, bool) or not isinstance(self.n, int | np.integer) or self.n < 0:
            raise ValueError(f"n must be a non-negative int, got {self.n!r}")
        for name in ("sum_m", "sum_d", "sum_m2", "sum_d2", "sum_md"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be finite and >= 0 (counts), got {value!r}")

    @classmethod
    def from_user_totals(cls, m: npt.ArrayLike, d: npt.ArrayLike) -> ArmSums:
        """Sums from per-user engagements ``m`` and impressions ``d`` (tests and small offline use)."""
        m_arr = np.asarray(m, dtype=np.float64)
        d_arr = np.asarray(d, dtype=np.float64)
        if m_arr.ndim != 1 or m_arr.shape != d_arr.shape:
            raise ValueError(f"m and d must be 1-D of equal length, got shapes {m_arr.shape} and {d_arr.shape}")
        return cls(
            n=int(m_arr.size),
            sum_m=float(m_arr.sum()),
            sum_d=float(d_arr.sum()),
            sum_m2=float(m_arr @ m_arr),
            sum_d2=float(d_arr @ d_arr),
            sum_md=float(m_arr @ d_arr),
        )

    @property
    def rate(self) -> float:
        """Engagement rate as a ratio of sums, R = ΣM/ΣD (§1 primary metric)."""
        if self.sum_d <= 0:
            raise ValueError(f"rate is undefined without impressions (sum_d={self.sum_d})")
        return self.sum_m / self.sum_d

    def as_array(self) -> npt.NDArray[np.float64]:
        """(n, ΣM, ΣD, ΣM², ΣD², ΣMD): the column order of :func:`relative_lift_arrays`."""
        return np.array([self.n, self.sum_m, self.sum_d, self.sum_m2, self.sum_d2, self.sum_md], dtype=np.float64)

    def engagements_per_user(self) -> MeanSums:
        """Per-user engagements M as a mean metric (a guardrail), from the same sums."""
        return MeanSums(self.n, self.sum_m, self.sum_m2)

    def impressions_per_user(self) -> MeanSums:
        """Per-user impressions D as a mean metric (a guardrail: the candidate must not shrink reach)."""
        return MeanSums(self.n, self.sum_d, self.sum_d2)

    def ratio_variance(self) -> float:
        """Delta-method Var(R̂) = [σ²_M − 2R·σ_MD + R²·σ²_D] / (n·μ_D²) (§2, GrowthBook eq. 12)."""
        if self.n < 2:
            raise ValueError(f"ratio_variance needs n >= 2 users, got n={self.n}")
        n = self.n
        r = self.rate
        var_m = (self.sum_m2 - self.sum_m**2 / n) / (n - 1)
        var_d = (self.sum_d2 - self.sum_d**2 / n) / (n - 1)
        cov_md = (self.sum_md - self.sum_m * self.sum_d / n) / (n - 1)
        mean_d = self.sum_d / n
        # Clamp rounding noise: the quadratic form is a variance, hence >= 0 in exact arithmetic.
        return max(0.0, (var_m - 2.0 * r * cov_md + r * r * var_d) / (n * mean_d * mean_d))


@dataclass(frozen=True)
class MeanSums:
    """Sufficient statistics of a per-user metric x over an arm's n users: n, Σx, Σx².

    What a guardrail needs (impressions/user, posts/user, engagements/user): SQL sums the per-user
    values and their squares per arm, like :class:`ArmSums` does for the ratio metric.
    """

    n: int
    total: float
    sum_squares: float

    def __post_init__(self) -> None:
        if isinstance(self.n, bool) or not isinstance(self.n, int | np.integer) or self.n < 0:
            raise ValueError(f"n must be a non-negative int, got {self.n!r}")
        for name in ("total", "sum_squares"):
            value = getattr(self, name)
            if not math.isfinite(value):
                raise ValueError(f"{name} must be finite, got {value!r}")
        if self.sum_squares < 0:
            raise ValueError(f"sum_squares must be >= 0, got {self.sum_squares!r}")

    @classmethod
    def from_values(cls, values: npt.ArrayLike) -> MeanSums:
        x = np.asarray(values, dtype=np.float64)
        if x.ndim != 1:
            raise ValueError(f"values must be 1-D, got shape {x.shape}")
        return cls(int(x.size), float(x.sum()), float(x @ x))

    @property
    def mean(self) -> float:
        if self.n < 1:
            raise ValueError("mean is undefined without users (n=0)")
        return self.total / self.n

    @property
    def variance(self) -> float:
        """Sample (n − 1) variance, as gbstats' ``SampleMeanStatistic``."""
        return mean_and_variance(self.total, self.sum_squares, self.n)[1]


def relative_lift_arrays(
    control: npt.ArrayLike, treatment: npt.ArrayLike
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Vectorized delta-method relative lift and its SE (same formulas as :func:`relative_lift`).

    ``control``/``treatment`` hold the sums (n, ΣM, ΣD, ΣM², ΣD², ΣMD) on their last axis (any leading
    shape, e.g. runs × hours; see :meth:`ArmSums.as_array`). Cells without a defined lift (n < 2, no
    impressions, no control engagements) are NaN. Used by the Monte-Carlo validation of the hourly
    monitor, and for dashboards over many looks.
    """

    def moments(s: npt.NDArray[np.float64]) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        n, sm, sd, sm2, sd2, smd = (s[..., i] for i in range(6))
        with np.errstate(divide="ignore", invalid="ignore"):
            r = sm / sd
            var_m = (sm2 - sm * sm / n) / (n - 1)
            var_d = (sd2 - sd * sd / n) / (n - 1)
            cov = (smd - sm * sd / n) / (n - 1)
            mean_d = sd / n
            var = np.maximum(0.0, (var_m - 2.0 * r * cov + r * r * var_d) / (n * mean_d * mean_d))
        bad = (n < 2) | ~(sd > 0)
        return np.where(bad, np.nan, r), np.where(bad, np.nan, var)

    c = np.asarray(control, dtype=np.float64)
    t = np.asarray(treatment, dtype=np.float64)
    if c.shape[-1:] != (6,) or t.shape[-1:] != (6,):
        raise ValueError(f"control and treatment need 6 sums on the last axis, got {c.shape} and {t.shape}")
    r_c, v_c = moments(c)
    r_t, v_t = moments(t)
    r_c = np.where(r_c > 0, r_c, np.nan)
    lift = r_t / r_c - 1.0
    se = np.sqrt(v_t / r_c**2 + r_t**2 * v_c / r_c**4)
    return lift, se


@dataclass(frozen=True)
class LiftEstimate:
    """Relative lift L̂ = R_T/R_C − 1 with a two-sided (1 − alpha) normal CI and p-value."""

    control_rate: float
    treatment_rate: float
    lift: float
    se: float
    ci_low: float
    ci_high: float
    p_value: float
    alpha: float


def _normal_interval(estimate: float, se: float, alpha: float) -> tuple[float, float, float]:
    """(ci_low, ci_high, two-sided p) of a normal test of estimate = 0; se = 0 is a point mass."""
    if se == 0.0:
        return estimate, estimate, 1.0 if estimate == 0.0 else 0.0
    half = float(special.ndtri(1.0 - alpha / 2.0)) * se
    return estimate - half, estimate + half, _two_sided_normal_p(estimate / se)


def relative_lift(control: ArmSums, treatment: ArmSums, *, alpha: float = 0.05) -> LiftEstimate:
    """Delta-method relative lift on per-user sums, normal approximation (§2, Deng et al. 2018).

    Var(L̂) ≈ Var(R̂_T)/R_C² + R_T²·Var(R̂_C)/R_C⁴ for independent arms. Valid because users, not
    impressions, are randomized and R_C (≈ 6 %) is far from 0.
    """
    _check_alpha(alpha)
    r_c, r_t = control.rate, treatment.rate
    if r_c <= 0:
        raise ValueError(f"relative lift is undefined when the control rate is 0 (sum_m={control.sum_m})")
    lift = r_t / r_c - 1.0
    var = treatment.ratio_variance() / r_c**2 + r_t**2 * control.ratio_variance() / r_c**4
    se = math.sqrt(var)
    low, high, p = _normal_interval(lift, se, alpha)
    return LiftEstimate(r_c, r_t, lift, se, low, high, p, alpha)


# --- GrowthBook-style helpers (gbstats frequentist engine; golden values T10–T10d) -------------------


@dataclass(frozen=True)
class EffectEstimate:
    """A GrowthBook-style result: point estimate, interval, standard error, two-sided p-value."""

    expected: float
    ci_low: float
    ci_high: float
    se: float
    p_value: float

    @property
    def ci(self) -> tuple[float, float]:
        return self.ci_low, self.ci_high


def mean_and_variance(total: float, sum_squares: float, n: int) -> tuple[float, float]:
    """Sample mean and (n − 1) variance from Σx, Σx², n — gbstats' ``SampleMeanStatistic`` (T10)."""
    if n < 2:
        raise ValueError(f"n must be >= 2, got {n}")
    return total / n, max(0.0, (sum_squares - total * total / n) / (n - 1))


def proportion_variance(p: float) -> float:
    """Per-unit variance p(1 − p) of a proportion metric, no n − 1 (§2; gbstats ``ProportionStatistic``)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p!r}")
    return p * (1.0 - p)


def _welch(
    delta: float, var_delta: float, var_c: float, n_c: int, var_t: float, n_t: int, alpha: float
) -> EffectEstimate:
    _check_alpha(alpha)
    se = math.sqrt(var_delta)
    a, b = var_t / n_t, var_c / n_c
    denominator = a * a / (n_t - 1) + b * b / (n_c - 1)
    if se == 0.0 or denominator == 0.0:
        low, high, p = _normal_interval(delta, se, alpha)
        return EffectEstimate(delta, low, high, se, p)
    dof = (a + b) ** 2 / denominator  # Welch–Satterthwaite on the per-arm variances (§2)
    half = float(special.stdtrit(dof, 1.0 - alpha / 2.0)) * se
    p = float(2.0 * special.stdtr(dof, -abs(delta) / se))
    return EffectEstimate(delta, delta - half, delta + half, se, p)


def _check_welch_inputs(var_c: float, n_c: int, var_t: float, n_t: int) -> None:
    for name, n in (("n_c", n_c), ("n_t", n_t)):
        if n < 2:
            raise ValueError(f"{name} must be >= 2, got {n}")
    for name, var in (("var_c", var_c), ("var_t", var_t)):
        if not var >= 0.0:
            raise ValueError(f"{name} must be >= 0, got {var}")


def welch_relative(
    mean_c: float, var_c: float, n_c: int, mean_t: float, var_t: float, n_t: int, alpha: float = 0.05
) -> EffectEstimate:
    """Relative effect (μ_T − μ_C)/|μ_C| with Welch t interval (§2; gbstats ``TwoSidedTTest``).

    ``var_*`` are per-unit variances σ̂² (sample variance, or p(1 − p) for proportions).
    """
    _check_welch_inputs(var_c, n_c, var_t, n_t)
    if mean_c == 0:
        raise ValueError("mean_c must be non-zero for a relative effect, got 0")
    delta = (mean_t - mean_c) / abs(mean_c)
    var_delta = var_t / (n_t * mean_c**2) + var_c * mean_t**2 / (n_c * mean_c**4)
    return _welch(delta, var_delta, var_c, n_c, var_t, n_t, alpha)


def welch_absolute(
    mean_c: float, var_c: float, n_c: int, mean_t: float, var_t: float, n_t: int, alpha: float = 0.05
) -> EffectEstimate:
    """Absolute effect μ_T − μ_C with Welch t interval, Var = σ̂²_T/n_T + σ̂²_C/n_C (§2)."""
    _check_welch_inputs(var_c, n_c, var_t, n_t)
    return _welch(mean_t - mean_c, var_t / n_t + var_c / n_c, var_c, n_c, var_t, n_t, alpha)


def confidence_sequence(
    expected: float,
    se: float,
    n_total: int,
    *,
    alpha: float = 0.05,
    n_star: float = DEFAULT_N_STAR,
    theta0: float = 0.0,
) -> EffectEstimate:
    """Two-sided asymptotic confidence sequence (Waudby-Smith et al. eq. 9; gbstats; §3.1).

    ``n_total`` = users in both arms, ``n_star`` = N at which the decision is made (fixed before the
    start). Same point estimate and SE; the interval widens so that it may be read at every hour.
    The p-value is 1/e capped at 1, so p ≤ alpha ⇔ theta0 ∉ CS (T15); it is not a running minimum.
    """
    _check_alpha(alpha)
    if n_total < 1:
        raise ValueError(f"n_total must be >= 1, got {n_total}")
    if not n_star > 0:
        raise ValueError(f"n_star must be > 0, got {n_star!r}")
    if not se >= 0.0:
        raise ValueError(f"se must be >= 0, got {se!r}")
    rho2 = sequential_rho(alpha, n_star) ** 2
    big = n_total * rho2 + 1.0
    half = cs_half_width(float(se), float(n_total), alpha=alpha, n_star=n_star)
    if se == 0.0:
        p = 1.0 if expected == theta0 else 0.0
    else:
        s2 = (expected - theta0) ** 2 * n_total / se**2
        log_e = rho2 * s2 / (2.0 * big) - 0.5 * math.log(big)
        p = min(1.0, math.exp(-log_e))
    return EffectEstimate(expected, expected - half, expected + half, se, p)


# --- SRM ------------------------------------------------------------------------------------------


def srm_p_values(counts: npt.ArrayLike, weights: Sequence[float]) -> npt.NDArray[np.float64]:
    """Vectorized :func:`srm_p_value`: ``counts`` has the arms on its last axis (e.g. runs × hours × k)."""
    w = np.asarray(weights, dtype=np.float64)
    x = np.asarray(counts, dtype=np.float64)
    if x.shape[-1:] != w.shape or w.ndim != 1:
        raise ValueError(f"counts and weights must have equal length, got {x.shape[-1:]} and {w.shape}")
    keep = w > 0
    x, w = x[..., keep], w[keep]
    if np.any(x < 0):
        raise ValueError("counts must be >= 0")
    total = x.sum(axis=-1, keepdims=True)
    if w.size < 2:
        return np.ones(x.shape[:-1])
    expected = total * (w / w.sum())
    with np.errstate(divide="ignore", invalid="ignore"):
        statistic = np.where(expected > 0, (x - expected) ** 2 / expected, 0.0).sum(axis=-1)
    p = special.chdtrc(w.size - 1, statistic)
    return np.asarray(np.where(total[..., 0] > 0, p, 1.0), dtype=np.float64)


def srm_p_value(counts: Sequence[int], weights: Sequence[float]) -> float:
    """Pearson χ² goodness-of-fit p of user counts vs configured weights, df = k − 1 (§5).

    Arms with weight ≤ 0 are skipped; weights are renormalized over the rest. An arm with weight > 0
    and 0 users is kept: losing a whole arm is the worst mismatch. No users (or < 2 arms) → p = 1.
    """
    if len(counts) != len(weights):
        raise ValueError(f"counts and weights must have equal length, got {len(counts)} and {len(weights)}")
    kept = [(float(c), float(w)) for c, w in zip(counts, weights, strict=True) if w > 0]
    if any(c < 0 for c, _ in kept):
        raise ValueError(f"counts must be >= 0, got {list(counts)}")
    total = sum(c for c, _ in kept)
    total_weight = sum(w for _, w in kept)
    if len(kept) < 2 or total == 0:
        return 1.0
    statistic = 0.0
    for observed, weight in kept:
        expected = total * weight / total_weight
        statistic += (observed - expected) ** 2 / expected
    return float(special.chdtrc(len(kept) - 1, statistic))


SrmStatus = Literal["ok", "mismatch", "not_enough_traffic"]


@dataclass(frozen=True)
class SrmResult:
    """Outcome of the final-look SRM check; ``message`` is readable by a product manager."""

    status: SrmStatus
    p_value: float
    counts: tuple[int, ...]
    weights: tuple[float, ...]
    message: str

    @property
    def passed(self) -> bool:
        return self.status == "ok"


def check_srm(
    counts: Sequence[int],
    weights: Sequence[float],
    *,
    threshold: float = SRM_THRESHOLD,
    min_count_per_arm: int = SRM_MIN_COUNT_PER_ARM,
) -> SrmResult:
    """χ² SRM check with GrowthBook's traffic floor: total users < k × ``min_count_per_arm`` → no verdict.

    The floor is on the total, not per arm, so an arm that lost all its users is flagged as SRM
    instead of hidden as "not enough traffic".
    """
    _check_alpha(threshold, "threshold")
    p = srm_p_value(counts, weights)
    k = sum(1 for w in weights if w > 0)
    total = sum(c for c, w in zip(counts, weights, strict=True) if w > 0)
    shown = " vs ".join(f"{c:,}" for c in counts)
    if total < k * min_count_per_arm:
        status: SrmStatus = "not_enough_traffic"
        message = f"not enough traffic for the SRM check: {total:,} users < {k * min_count_per_arm:,}"
    elif p < threshold:
        status = "mismatch"
        message = f"sample ratio mismatch p={p:.2g} < {threshold:g}: users {shown}"
    else:
        status = "ok"
        message = f"no sample ratio mismatch (p={p:.2g}): users {shown}"
    return SrmResult(status, p, tuple(int(c) for c in counts), tuple(float(w) for w in weights), message)


# --- Sample size (§6) -----------------------------------------------------------------------------


def required_impressions_per_arm(
    baseline_rate: float,
    relative_mde: float,
    *,
    alpha: float = 0.05,
    power: float = 0.8,
    design_effect: float = 1.0,
) -> int:
    """Impressions per arm for a two-sided test at ``alpha`` to detect ``relative_mde`` (§6), × DE.

    n = (z_{1−α/2} + z_power)² · [p₁(1−p₁) + p₂(1−p₂)] / (p₂ − p₁)² · DE, DE = Var_delta / Var_iid.
    Divide by the expected impressions per user for the users-per-arm gate (§1 "Pre-launch power").
    """
    _check_alpha(alpha)
    _check_alpha(power, "power")
    if not 0.0 < baseline_rate < 1.0:
        raise ValueError(f"baseline_rate must be in (0, 1), got {baseline_rate!r}")
    p2 = baseline_rate * (1.0 + relative_mde)
    if relative_mde == 0 or not 0.0 < p2 < 1.0:
        raise ValueError(f"relative_mde must be non-zero and keep the rate in (0, 1), got {relative_mde!r}")
    if not design_effect >= 1.0:
        raise ValueError(f"design_effect must be >= 1, got {design_effect!r}")
    z = float(special.ndtri(1.0 - alpha / 2.0) + special.ndtri(power))
    p1 = baseline_rate
    n_iid = z * z * (p1 * (1.0 - p1) + p2 * (1.0 - p2)) / (p2 - p1) ** 2
    return math.ceil(n_iid * design_effect)


__all__ = [
    "DEFAULT_N_STAR",
    "SRM_MIN_COUNT_PER_ARM",
    "SRM_THRESHOLD",
    "ArmSums",
    "EffectEstimate",
    "LiftEstimate",
    "MeanSums",
    "SrmResult",
    "SrmStatus",
    "check_srm",
    "confidence_sequence",
    "mean_and_variance",
    "proportion_variance",
    "relative_lift",
    "relative_lift_arrays",
    "required_impressions_per_arm",
    "srm_p_value",
    "srm_p_values",
    "welch_absolute",
    "welch_relative",
]
