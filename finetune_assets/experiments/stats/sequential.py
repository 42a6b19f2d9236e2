"""Always-valid statistics that may be read every hour (reference ab-testing.md §3.1, §3.2, §5).

* Asymptotic confidence sequences (Waudby-Smith et al.; GrowthBook's two-sided eq. 9 and one-sided
  eq. 134 forms): same point estimate and SE as the fixed-horizon test, a wider interval that keeps
  its coverage however often it is looked at.
* The one-sided sequential p-value (the α at which the one-sided bound touches 0, by bisection).
* Sequential SRM: a Dirichlet–multinomial Bayes factor on the cumulative exposure counts, whose
  running minimum of 1/BF is an anytime-valid p-value (Lindon & Malek family).

The kernels (:func:`sequential_rho`, :func:`cs_half_width`, :func:`srm_log_bayes_factor`) accept numpy
arrays as well as floats, so Monte-Carlo validation runs the very code the engine runs. numpy + scipy
only; no vendor code.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, overload

import numpy as np
import numpy.typing as npt
from scipy import special

Side = Literal["lesser", "greater"]
"""``"lesser"``: H₁ treatment < control (harm), bound (−∞, Δ̂ + hw]; ``"greater"``: win, [Δ̂ − hw, ∞)."""

NUMERICAL_PVALUE_NOT_CONVERGED = "NUMERICAL_PVALUE_NOT_CONVERGED"
"""Error code of :func:`one_sided_sequential_p_value` when the bisection does not reach its tolerance."""

P_VALUE_MIN_ALPHA = 1e-5
P_VALUE_MAX_ALPHA = 0.4999
P_VALUE_TOLERANCE = 1e-6
P_VALUE_MAX_ITERATIONS = 100

SEQUENTIAL_SRM_ALPHA = 0.001
"""Alarm when the anytime-valid SRM p-value drops below this (§5)."""
SEQUENTIAL_SRM_PRIOR_STRENGTH = 100.0
"""k in the Dirichlet prior αᵢ = k·θᵢ of the sequential SRM test (§5 reference simulation)."""

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

    ρ = √((−2·log a + log(−2·log a + 1)) / N*), with a = α (two-sided, §3.1) or a = 2α (one-sided,
    §3.2). ``n_star`` is the forecast total users (both arms) at the decision; fix it before the start.
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

    * two-sided (§3.1): hw = s·√(2(Nρ² + 1)/(N²ρ²) · log(√(Nρ² + 1)/α));
    * one-sided (§3.2, GrowthBook eq. 134): hw = s·√(2(Nρ² + 1)/(N²ρ²) · log(1 + √(Nρ² + 1)/(2α))).

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
    """One-sided always-valid confidence sequence (GrowthBook eq. 134 form, §3.2).

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
    """The α at which the one-sided CS bound touches 0 (§3.2), with ρ fixed at the design ``alpha``.

    Bisection over [1e-5, 0.4999]: 1e-5 when the bound already excludes 0 at α = 1e-5, 0.4999 when it
    still includes 0 at α = 0.4999; otherwise bisect until |bound| < 1e-6, at most 100 iterations, else
    ``error = NUMERICAL_PVALUE_NOT_CONVERGED`` and no p-value. Because ρ is held at the design alpha,
    p ≤ alpha ⇔ 0 ∉ CS(alpha) (T15), up to the 1e-6 tolerance on the bound.
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


# --- sequential SRM (§5) --------------------------------------------------------------------------------


def _srm_weights(weights: Sequence[float]) -> npt.NDArray[np.float64]:
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or w.size < 2 or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"weights must be >= 0 with a positive sum over >= 2 arms, got {list(weights)}")
    return w / w.sum()


def srm_log_bayes_factor(
    counts: npt.ArrayLike,
    weights: Sequence[float],
    *,
    prior_strength: float = SEQUENTIAL_SRM_PRIOR_STRENGTH,
) -> npt.NDArray[np.float64]:
    """log BF of "the arm shares differ from ``weights``" vs "they match", for cumulative ``counts``.

    ``counts`` has the arms on its last axis (any leading shape, e.g. runs × hours). Dirichlet prior
    αᵢ = k·θᵢ: BF = Γ(Σα)/Γ(Σα + n) · Πᵢ Γ(αᵢ + xᵢ)/Γ(αᵢ) / Πᵢ θᵢ^xᵢ (§5), in logs. Arms with weight 0
    are dropped (their users cannot be explained by either hypothesis).
    """
    theta = _srm_weights(weights)
    if not (isinstance(prior_strength, int | float) and prior_strength > 0):
        raise ValueError(f"prior_strength must be > 0, got {prior_strength!r}")
    x = np.asarray(counts, dtype=np.float64)
    if x.shape[-1:] != theta.shape:
        raise ValueError(f"counts must have {theta.size} arms on the last axis, got shape {x.shape}")
    if np.any(x < 0):
        raise ValueError("counts must be >= 0")
    keep = theta > 0
    x, theta = x[..., keep], theta[keep]
    a = prior_strength * theta
    n = x.sum(axis=-1)
    log_bf = special.gammaln(a.sum()) - special.gammaln(a.sum() + n)
    log_bf = log_bf + (special.gammaln(a + x) - special.gammaln(a)).sum(axis=-1) - (x * np.log(theta)).sum(axis=-1)
    return np.asarray(log_bf, dtype=np.float64)


@dataclass(frozen=True)
class SequentialSrmResult:
    """Hourly sequential SRM: ``p_value`` is this look's 1/BF, ``running_min_p`` the anytime-valid p.

    Persist ``running_min_p`` and pass it back as ``previous_p`` at the next look.
    """

    counts: tuple[int, ...]
    weights: tuple[float, ...]
    log_bayes_factor: float
    p_value: float
    running_min_p: float
    alpha: float

    @property
    def alarm(self) -> bool:
        return self.running_min_p < self.alpha

    @property
    def message(self) -> str:
        shown = " vs ".join(f"{c:,}" for c in self.counts)
        if self.alarm:
            return (
                f"sample ratio mismatch (sequential test, anytime p={self.running_min_p:.2g} < {self.alpha:g}): "
                f"users {shown}; the assignment or the exposure logging is broken"
            )
        return f"no sample ratio mismatch so far (sequential test, anytime p={self.running_min_p:.2g}): users {shown}"


def sequential_srm(
    counts: Sequence[int],
    weights: Sequence[float],
    *,
    previous_p: float = 1.0,
    alpha: float = SEQUENTIAL_SRM_ALPHA,
    prior_strength: float = SEQUENTIAL_SRM_PRIOR_STRENGTH,
) -> SequentialSrmResult:
    """One hourly look of the sequential SRM test on cumulative exposure ``counts`` (§5, T9d).

    p = min(1, 1/BF); anytime-valid p = min(``previous_p``, p) — the running minimum over all looks
    so far (start with 1.0). Alarm when it drops below ``alpha`` (0.001): the experiment is invalid.
    """
    _check_alpha(alpha, one_sided=False)
    if not (isinstance(previous_p, int | float) and 0.0 <= previous_p <= 1.0):
        raise ValueError(f"previous_p must be in [0, 1], got {previous_p!r}")
    if len(counts) != len(weights):
        raise ValueError(f"counts and weights must have equal length, got {len(counts)} and {len(weights)}")
    log_bf = float(srm_log_bayes_factor([float(c) for c in counts], weights, prior_strength=prior_strength))
    p = math.exp(-log_bf) if log_bf > 0 else 1.0
    return SequentialSrmResult(
        counts=tuple(int(c) for c in counts),
        weights=tuple(float(w) for w in weights),
        log_bayes_factor=log_bf,
        p_value=p,
        running_min_p=min(float(previous_p), p),
        alpha=float(alpha),
    )


__all__ = [
    "NUMERICAL_PVALUE_NOT_CONVERGED",
    "P_VALUE_MAX_ALPHA",
    "P_VALUE_MIN_ALPHA",
    "SEQUENTIAL_SRM_ALPHA",
    "SEQUENTIAL_SRM_PRIOR_STRENGTH",
    "OneSidedInterval",
    "SequentialPValue",
    "SequentialSrmResult",
    "Side",
    "cs_half_width",
    "one_sided_confidence_sequence",
    "one_sided_sequential_p_value",
    "sequential_rho",
    "sequential_srm",
    "srm_log_bayes_factor",
]
