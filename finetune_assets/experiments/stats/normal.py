"""Normal-approximation helpers shared by the fixed-horizon tests (argument checks, z interval, p-value)."""

from __future__ import annotations

from scipy import special


def check_alpha(alpha: float, name: str = "alpha") -> None:
    """Refuse a level outside (0, 1), naming the argument (``alpha``, ``power``, ``threshold``)."""
    if not (isinstance(alpha, int | float) and 0.0 < alpha < 1.0):
        raise ValueError(f"{name} must be in (0, 1), got {alpha!r}")


def two_sided_normal_p(z: float) -> float:
    return float(2.0 * special.ndtr(-abs(z)))


def normal_interval(estimate: float, se: float, alpha: float) -> tuple[float, float, float]:
    """(ci_low, ci_high, two-sided p) of a normal test of estimate = 0; se = 0 is a point mass."""
    if se == 0.0:
        return estimate, estimate, 1.0 if estimate == 0.0 else 0.0
    half = float(special.ndtri(1.0 - alpha / 2.0)) * se
    return estimate - half, estimate + half, two_sided_normal_p(estimate / se)


__all__ = ["check_alpha", "normal_interval", "two_sided_normal_p"]
