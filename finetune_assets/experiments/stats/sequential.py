"""Sequential SRM: an anytime-valid sample ratio mismatch test that may be run every hour.

A Dirichlet–multinomial Bayes factor on the cumulative exposure counts, whose running minimum of 1/BF
is an anytime-valid p-value (Lindon and Malek, "Anytime-Valid Inference for Multinomial Count Data",
NeurIPS 2022). The one-look χ² check is :mod:`.srm`; confidence sequences are in
:mod:`.confidence_sequences`. :func:`srm_log_bayes_factor` accepts numpy arrays, so Monte-Carlo
validation runs the very code the engine runs. numpy + scipy only; no vendor code.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import special

from finetune_assets.experiments.stats.normal import check_alpha

SEQUENTIAL_SRM_ALPHA = 0.001
"""Alarm when the anytime-valid SRM p-value drops below this."""
SEQUENTIAL_SRM_PRIOR_STRENGTH = 100.0
"""k in the Dirichlet prior αᵢ = k·θᵢ of the sequential SRM test."""


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
    αᵢ = k·θᵢ: BF = Γ(Σα)/Γ(Σα + n) · Πᵢ Γ(αᵢ + xᵢ)/Γ(αᵢ) / Πᵢ θᵢ^xᵢ, in logs. Arms with weight 0
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
    """One hourly look of the sequential SRM test on cumulative exposure ``counts``.

    p = min(1, 1/BF); anytime-valid p = min(``previous_p``, p) — the running minimum over all looks
    so far (start with 1.0). Alarm when it drops below ``alpha`` (0.001): the experiment is invalid.
    """
    check_alpha(alpha)
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
    "SEQUENTIAL_SRM_ALPHA",
    "SEQUENTIAL_SRM_PRIOR_STRENGTH",
    "SequentialSrmResult",
    "sequential_srm",
    "srm_log_bayes_factor",
]
