"""Per-arm sufficient statistics and the delta-method relative lift of a ratio metric.

Everything is a pure function of per-arm sums: SQL computes n, ΣM, ΣD, ΣM², ΣD², ΣMD per arm, and each
analysis here is O(1), reproducible and unit-testable. M = engagements of a user, D = impressions of a
user; the user is the randomization unit, so the variance is computed over users, never over
impressions (impressions of one user are correlated; treating them as independent understates the
variance and inflates false positives). The delta method follows Deng, Knoblich and Lu, "Applying the
Delta Method in Metric Analytics: A Practical Guide with Novel Ideas" (KDD 2018). numpy + scipy only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from finetune_assets.experiments.stats.normal import check_alpha, normal_interval


@dataclass(frozen=True)
class ArmSums:
    """Sufficient statistics of one arm over its n users (what the SQL layer returns)."""

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
        """Engagement rate as a ratio of sums, R = ΣM/ΣD (the primary metric)."""
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
        """Delta-method Var(R̂) = [σ²_M − 2R·σ_MD + R²·σ²_D] / (n·μ_D²), as in gbstats."""
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


def relative_lift(control: ArmSums, treatment: ArmSums, *, alpha: float = 0.05) -> LiftEstimate:
    """Delta-method relative lift on per-user sums, normal approximation (Deng et al. 2018).

    Var(L̂) ≈ Var(R̂_T)/R_C² + R_T²·Var(R̂_C)/R_C⁴ for independent arms. Valid because users, not
    impressions, are randomized and R_C (≈ 6 %) is far from 0.
    """
    check_alpha(alpha)
    r_c, r_t = control.rate, treatment.rate
    if r_c <= 0:
        raise ValueError(f"relative lift is undefined when the control rate is 0 (sum_m={control.sum_m})")
    lift = r_t / r_c - 1.0
    var = treatment.ratio_variance() / r_c**2 + r_t**2 * control.ratio_variance() / r_c**4
    se = math.sqrt(var)
    low, high, p = normal_interval(lift, se, alpha)
    return LiftEstimate(r_c, r_t, lift, se, low, high, p, alpha)


def mean_and_variance(total: float, sum_squares: float, n: int) -> tuple[float, float]:
    """Sample mean and (n − 1) variance from Σx, Σx², n — gbstats' ``SampleMeanStatistic``."""
    if n < 2:
        raise ValueError(f"n must be >= 2, got {n}")
    return total / n, max(0.0, (sum_squares - total * total / n) / (n - 1))


__all__ = [
    "ArmSums",
    "LiftEstimate",
    "MeanSums",
    "mean_and_variance",
    "relative_lift",
    "relative_lift_arrays",
]
