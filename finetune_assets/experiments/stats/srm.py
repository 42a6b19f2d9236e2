"""Fixed-horizon sample ratio mismatch (SRM): Pearson χ² of user counts against the configured split.

A single check at the final look. Repeated hourly it is only a warning (peeking inflates its false
alarms); the hourly monitor uses the anytime-valid test in :mod:`.sequential` instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
from scipy import special

from finetune_assets.experiments.stats.normal import check_alpha

SRM_THRESHOLD = 0.001
"""χ² p below this means sample ratio mismatch (the GrowthBook, Eppo and Statsig default)."""
SRM_MIN_COUNT_PER_ARM = 8
"""Fewer than ``k × 8`` users in k arms is "not enough traffic" for the SRM check (as GrowthBook)."""


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
    """Pearson χ² goodness-of-fit p of user counts vs configured weights, df = k − 1.

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
    check_alpha(threshold, "threshold")
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


__all__ = [
    "SRM_MIN_COUNT_PER_ARM",
    "SRM_THRESHOLD",
    "SrmResult",
    "SrmStatus",
    "check_srm",
    "srm_p_value",
    "srm_p_values",
]
