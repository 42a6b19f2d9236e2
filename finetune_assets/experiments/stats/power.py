"""Sample size of a fixed-horizon two-proportion test, inflated by the design effect of user clustering."""

from __future__ import annotations

import math

from scipy import special

from finetune_assets.experiments.stats.normal import check_alpha


def required_impressions_per_arm(
    baseline_rate: float,
    relative_mde: float,
    *,
    alpha: float = 0.05,
    power: float = 0.8,
    design_effect: float = 1.0,
) -> int:
    """Impressions per arm for a two-sided test at ``alpha`` to detect ``relative_mde``, × DE.

    n = (z_{1−α/2} + z_power)² · [p₁(1−p₁) + p₂(1−p₂)] / (p₂ − p₁)² · DE, DE = Var_delta / Var_iid
    (impressions of one user are correlated, so they carry less information than independent ones).
    Divide by the expected impressions per user for the users-per-arm gate.
    """
    check_alpha(alpha)
    check_alpha(power, "power")
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


__all__ = ["required_impressions_per_arm"]
