"""Fixed-horizon effect tests on per-arm means, as GrowthBook's gbstats frequentist engine computes them.

Welch t intervals for the relative effect (μ_T − μ_C)/|μ_C| (delta-method variance) and the absolute
effect μ_T − μ_C, from per-unit variances: the sample variance of a mean metric, or p(1 − p) of a
proportion. Golden values in the tests were computed with gbstats. numpy + scipy only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import special

from finetune_assets.experiments.stats.normal import check_alpha, normal_interval


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


def proportion_variance(p: float) -> float:
    """Per-unit variance p(1 − p) of a proportion metric, no n − 1 (gbstats ``ProportionStatistic``)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p!r}")
    return p * (1.0 - p)


def _welch(
    delta: float, var_delta: float, var_c: float, n_c: int, var_t: float, n_t: int, alpha: float
) -> EffectEstimate:
    check_alpha(alpha)
    se = math.sqrt(var_delta)
    a, b = var_t / n_t, var_c / n_c
    denominator = a * a / (n_t - 1) + b * b / (n_c - 1)
    if se == 0.0 or denominator == 0.0:
        low, high, p = normal_interval(delta, se, alpha)
        return EffectEstimate(delta, low, high, se, p)
    dof = (a + b) ** 2 / denominator  # Welch–Satterthwaite on the per-arm variances
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
    """Relative effect (μ_T − μ_C)/|μ_C| with Welch t interval (gbstats ``TwoSidedTTest``).

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
    """Absolute effect μ_T − μ_C with Welch t interval, Var = σ̂²_T/n_T + σ̂²_C/n_C."""
    _check_welch_inputs(var_c, n_c, var_t, n_t)
    return _welch(mean_t - mean_c, var_t / n_t + var_c / n_c, var_c, n_c, var_t, n_t, alpha)


__all__ = ["EffectEstimate", "proportion_variance", "welch_absolute", "welch_relative"]
