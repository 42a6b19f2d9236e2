"""Confidence sequences: intervals that stay valid however often they are read (e.g. every hour).

Asymptotic confidence sequences (Waudby-Smith et al., "Time-uniform central limit theory and asymptotic
confidence sequences", arXiv:2103.06476) with the normal-mixture boundary of Howard et al., "Time-uniform,
nonparametric, nonasymptotic confidence sequences" (arXiv:1810.08240), in the two-sided and one-sided forms
GrowthBook's gbstats uses: the same point estimate and SE as the fixed-horizon test, a wider interval that
keeps its coverage at every look. Also the one-sided sequential p-value (the α at which the one-sided
bound touches 0, by bisection).

The kernels (:func:`sequential_rho`, :func:`cs_half_width`) accept numpy arrays as well as floats, so
Monte-Carlo validation runs the very code the engine runs. numpy only; no vendor code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, overload

import numpy as np
import numpy.typing as npt

from finetune_assets.experiments.stats.effects import EffectEstimate

Side = Literal["lesser", "greater"]
"""``"lesser"``: H₁ treatment < control (harm), bound (−∞, Δ̂ + hw]; ``"greater"``: win, [Δ̂ − hw, ∞)."""

NUMERICAL_PVALUE_NOT_CONVERGED = "NUMERICAL_PVALUE_NOT_CONVERGED"
"""Error code of :func:`one_sided_sequential_p_value` when the bisection does not reach its tolerance."""

P_VALUE_MIN_ALPHA = 1e-5
P_VALUE_MAX_ALPHA = 0.4999
P_VALUE_TOLERANCE = 1e-6
P_VALUE_MAX_ITERATIONS = 100

DEFAULT_N_STAR = 5000
"""gbstats' default confidence-sequence tuning N*; set it to the forecast N at the decision."""

FloatOrArray = float | npt.NDArray[np.float64]


def _check_alpha(alpha: float, *, one_sided: bool, name: str = "alpha") -> None:
    upper = 0.5 if one_sided else 1.0
    if not (isinstance(alpha, int | float) and 0.0 < alpha < upper):
        more = " (a one-sided confidence sequence needs alpha < 0.5)" if one_sided else ""
        raise ValueError(f"{name} must be in (0, {upper:g}){more}, got {alpha!r}")


def _check_n_star(n_star: float) -> None:
    if isinstance(n_star, bool) or not (isinstance(n_star, int | float) and math.isfinite(n_star) and n_star > 0):
        raise ValueError(f"n_star must be a finite number > 0 (forecast users at the decision), got {n_star!r}")


def sequential_rho(alpha: float, n_star: float, *, one_sided: bool = False) -> float:
    """Tuning ρ of the normal-mixture boundary, chosen so the CS is narrowest at N = ``n_star``.

    ρ = √((−2·log a + log(−2·log a + 1)) / N*), with a = α (two-sided) or a = 2α (one-sided), the
    tuning of Howard et al. ``n_star`` is the forecast total users (both arms) at the decision; fix it
    before the start.
    """
    _check_alpha(alpha, one_sided=one_sided)
    _check_n_star(n_star)
    a = 2.0 * alpha if one_sided else alpha
    log_term = -2.0 * math.log(a)
    return math.sqrt((log_term + math.log(log_term + 1.0)) / n_star)


@overload
def cs_half_width(
    se: float, n_total: float, *, alpha: float, n_star: float, one_sided: bool = ..., rho: float | None = ...
) -> float: ...
@overload
def cs_half_width(
    se: npt.NDArray[np.float64],
    n_total: FloatOrArray,
    *,
    alpha: float,
    n_star: float,
    one_sided: bool = ...,
    rho: float | None = ...,
) -> npt.NDArray[np.float64]: ...
@overload
def cs_half_width(
    se: FloatOrArray,
    n_total: npt.NDArray[np.float64],
    *,
    alpha: float,
    n_star: float,
    one_sided: bool = ...,
    rho: float | None = ...,
) -> npt.NDArray[np.float64]: ...
def cs_half_width(
    se: FloatOrArray,
    n_total: FloatOrArray,
    *,
    alpha: float,
    n_star: float,
    one_sided: bool = False,
    rho: float | None = None,
) -> FloatOrArray:
    """Half-width of the asymptotic confidence sequence for an estimate with standard error ``se``.

    N = ``n_total`` (users in both arms), s² = SE²·N (per-unit variance of the effect), ρ from
    :func:`sequential_rho` unless given (the p-value bisection keeps the design ρ fixed):

    * two-sided: hw = s·√(2(Nρ² + 1)/(N²ρ²) · log(√(Nρ² + 1)/α));
    * one-sided: hw = s·√(2(Nρ² + 1)/(N²ρ²) · log(1 + √(Nρ² + 1)/(2α))).

    Works elementwise on numpy arrays (returns an array) and on floats (returns a float).
    """
    _check_alpha(alpha, one_sided=one_sided)
    r = sequential_rho(alpha, n_star, one_sided=one_sided) if rho is None else rho
    if not (isinstance(r, int | float) and r > 0):
        raise ValueError(f"rho must be > 0, got {r!r}")
    se_arr = np.asarray(se, dtype=np.float64)
    n_arr = np.asarray(n_total, dtype=np.float64)
    big = n_arr * r * r + 1.0
    log_term = np.log1p(np.sqrt(big) / (2.0 * alpha)) if one_sided else np.log(np.sqrt(big) / alpha)
    with np.errstate(divide="ignore", invalid="ignore"):
        # s·√(…/N²) = SE·√N·√(…)/N; written as SE·√(2·big·log/(N·ρ²)) to avoid overflow for big N.
        half = se_arr * np.sqrt(2.0 * big * log_term / (n_arr * r * r))
    if np.ndim(half) == 0:
        return float(half)
    return np.asarray(half, dtype=np.float64)


def confidence_sequence(
    expected: float,
    se: float,
    n_total: int,
    *,
    alpha: float = 0.05,
    n_star: float = DEFAULT_N_STAR,
    theta0: float = 0.0,
) -> EffectEstimate:
    """Two-sided asymptotic confidence sequence (Waudby-Smith et al.; as in gbstats).

    ``n_total`` = users in both arms, ``n_star`` = N at which the decision is made (fixed before the
    start). Same point estimate and SE; the interval widens so that it may be read at every hour.
    The p-value is 1/e capped at 1, so p ≤ alpha ⇔ theta0 ∉ CS; it is not a running minimum.
    """
    _check_alpha(alpha, one_sided=False)
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


@dataclass(frozen=True)
class OneSidedInterval:
    """A one-sided interval: ``(-inf, upper]`` for ``"lesser"``, ``[lower, inf)`` for ``"greater"``."""

    side: Side
    expected: float
    se: float
    half_width: float
    alpha: float

    @property
    def lower(self) -> float:
        return self.expected - self.half_width if self.side == "greater" else -math.inf

    @property
    def upper(self) -> float:
        return self.expected + self.half_width if self.side == "lesser" else math.inf

    @property
    def bound(self) -> float:
        """The finite end: the upper bound of a harm interval, the lower bound of a win interval."""
        return self.upper if self.side == "lesser" else self.lower

    def excludes(self, theta0: float = 0.0) -> bool:
        """True when θ₀ lies outside the interval: harm (or win) shown at level alpha."""
        return self.upper < theta0 if self.side == "lesser" else self.lower > theta0


def _check_side(side: str) -> None:
    if side not in ("lesser", "greater"):
        raise ValueError(f"side must be 'lesser' (harm) or 'greater' (win), got {side!r}")


def _check_estimate(expected: float, se: float, n_total: float) -> None:
    if not math.isfinite(expected):
        raise ValueError(f"expected must be finite, got {expected!r}")
    if not (math.isfinite(se) and se >= 0.0):
        raise ValueError(f"se must be finite and >= 0, got {se!r}")
    if not n_total >= 1:
        raise ValueError(f"n_total must be >= 1, got {n_total!r}")


def one_sided_confidence_sequence(
    expected: float,
    se: float,
    n_total: int,
    *,
    n_star: float,
    alpha: float = 0.025,
    side: Side = "lesser",
) -> OneSidedInterval:
    """One-sided always-valid confidence sequence (the one-sided normal-mixture form gbstats uses).

    Harm (``side="lesser"``): (−∞, Δ̂ + hw]; its upper bound < 0 shows the treatment is worse, at level
    ``alpha``, however many hourly looks were taken. Win (``"greater"``): [Δ̂ − hw, ∞). ``alpha`` ≥ 0.5
    is refused (the one-sided ρ uses 2α, which must stay below 1).
    """
    _check_side(side)
    _check_alpha(alpha, one_sided=True)
    _check_n_star(n_star)
    _check_estimate(expected, se, n_total)
    half = cs_half_width(float(se), float(n_total), alpha=alpha, n_star=n_star, one_sided=True)
    return OneSidedInterval(side, float(expected), float(se), half, float(alpha))


@dataclass(frozen=True)
class SequentialPValue:
    """One-sided sequential p-value; ``p_value`` is None with ``error`` set when bisection fails."""

    p_value: float | None
    error: str | None = None
    iterations: int = 0


def one_sided_sequential_p_value(
    expected: float,
    se: float,
    n_total: int,
    *,
    n_star: float,
    alpha: float = 0.025,
    side: Side = "lesser",
) -> SequentialPValue:
    """The α at which the one-sided CS bound touches 0, with ρ fixed at the design ``alpha``.

    Bisection over [1e-5, 0.4999]: 1e-5 when the bound already excludes 0 at α = 1e-5, 0.4999 when it
    still includes 0 at α = 0.4999; otherwise bisect until |bound| < 1e-6, at most 100 iterations, else
    ``error = NUMERICAL_PVALUE_NOT_CONVERGED`` and no p-value. Because ρ is held at the design alpha,
    p ≤ alpha ⇔ 0 ∉ CS(alpha), up to the 1e-6 tolerance on the bound.
    """
    _check_side(side)
    _check_alpha(alpha, one_sided=True)
    _check_n_star(n_star)
    _check_estimate(expected, se, n_total)
    rho = sequential_rho(alpha, n_star, one_sided=True)
    sign = 1.0 if side == "lesser" else -1.0

    def bound(a: float) -> float:
        # Signed so that "> 0" always means "0 is still inside the interval".
        half = cs_half_width(float(se), float(n_total), alpha=a, n_star=n_star, one_sided=True, rho=rho)
        return sign * expected + half

    if bound(P_VALUE_MIN_ALPHA) < 0.0:
        return SequentialPValue(P_VALUE_MIN_ALPHA)
    if bound(P_VALUE_MAX_ALPHA) > 0.0:
        return SequentialPValue(P_VALUE_MAX_ALPHA)
    low, high = P_VALUE_MIN_ALPHA, P_VALUE_MAX_ALPHA
    mid = 0.5 * (low + high)
    for iteration in range(1, P_VALUE_MAX_ITERATIONS + 1):
        value = bound(mid)
        if abs(value) < P_VALUE_TOLERANCE:
            return SequentialPValue(mid, None, iteration)
        if value > 0.0:
            low = mid  # 0 still inside: a larger α (narrower interval) is needed
        else:
            high = mid
        mid = 0.5 * (low + high)
    return SequentialPValue(None, NUMERICAL_PVALUE_NOT_CONVERGED, P_VALUE_MAX_ITERATIONS)


__all__ = [
    "DEFAULT_N_STAR",
    "NUMERICAL_PVALUE_NOT_CONVERGED",
    "P_VALUE_MAX_ALPHA",
    "P_VALUE_MIN_ALPHA",
    "OneSidedInterval",
    "SequentialPValue",
    "Side",
    "confidence_sequence",
    "cs_half_width",
    "one_sided_confidence_sequence",
    "one_sided_sequential_p_value",
    "sequential_rho",
]
