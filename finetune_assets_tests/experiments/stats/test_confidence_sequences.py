"""Two- and one-sided confidence sequences and the one-sided sequential p-value."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from finetune_assets.experiments.stats import confidence_sequences
from finetune_assets.experiments.stats.confidence_sequences import (
    NUMERICAL_PVALUE_NOT_CONVERGED,
    P_VALUE_MAX_ALPHA,
    P_VALUE_MIN_ALPHA,
    Side,
    confidence_sequence,
    cs_half_width,
    one_sided_confidence_sequence,
    one_sided_sequential_p_value,
    sequential_rho,
)
from finetune_assets.experiments.stats.effects import EffectEstimate, proportion_variance, welch_relative


def _rounded(e: EffectEstimate) -> tuple[float, ...]:
    return tuple(round(x, 5) for x in (e.expected, e.ci_low, e.ci_high, e.se, e.p_value))


def _reference_one_sided_half_width(se: float, n: float, alpha: float, n_star: float) -> float:
    """The one-sided half-width written out independently: ρ with 2α, log(1 + √(Nρ² + 1)/(2α))."""
    a = 2 * alpha
    rho2 = (-2 * math.log(a) + math.log(-2 * math.log(a) + 1)) / n_star
    s2 = se**2 * n
    return math.sqrt(s2 * 2 * (n * rho2 + 1) / (n**2 * rho2) * math.log(1 + math.sqrt(n * rho2 + 1) / (2 * alpha)))


# --- two-sided ---------------------------------------------------------------------------------------------


def test_two_sided_confidence_sequence_golden() -> None:
    p_c, p_t = 1396 / 3000, 2422 / 3461
    fixed = welch_relative(p_c, proportion_variance(p_c), 3000, p_t, proportion_variance(p_t), 3461)
    cs = confidence_sequence(fixed.expected, fixed.se, 3000 + 3461, alpha=0.05, n_star=5000)
    assert _rounded(cs)[:4] == (0.50386, 0.40098, 0.60675, 0.03386)


def test_cs_width_is_smallest_near_n_star() -> None:
    def width(n_star: float) -> float:
        cs = confidence_sequence(0.0, 1.0, 6461, n_star=n_star)
        return cs.ci_high - cs.ci_low

    assert width(6461) < width(10_000) < width(10)
    # Critical multipliers at α = 0.05: 3.035 at N = N*, 3.86 at N/N* = 0.1.
    assert width(6461) / 2 == pytest.approx(3.035, abs=0.001)
    assert width(64_610) / 2 == pytest.approx(3.86, abs=0.01)


def test_two_sided_kernel_is_the_confidence_sequence_width() -> None:
    cs = confidence_sequence(0.3, 0.05, 6461, alpha=0.05, n_star=5000)
    assert cs_half_width(0.05, 6461, alpha=0.05, n_star=5000) == pytest.approx((cs.ci_high - cs.ci_low) / 2)


# --- one-sided ---------------------------------------------------------------------------------------------


def test_one_sided_rho_uses_two_alpha() -> None:
    assert sequential_rho(0.025, 20_000, one_sided=True) == pytest.approx(sequential_rho(0.05, 20_000))
    assert sequential_rho(0.05, 5000) == pytest.approx(
        math.sqrt((-2 * math.log(0.05) + math.log(-2 * math.log(0.05) + 1)) / 5000)
    )


def test_one_sided_half_width_matches_the_formula_scalar_and_vectorized() -> None:
    rng = np.random.default_rng(31)
    se = rng.uniform(0.001, 2.0, size=200)
    n = rng.integers(2, 10**6, size=200).astype(float)
    for alpha, n_star in ((0.025, 20_000.0), (0.1, 500.0), (0.001, 1e6)):
        vec = cs_half_width(se, n, alpha=alpha, n_star=n_star, one_sided=True)
        assert isinstance(vec, np.ndarray)
        expected = [_reference_one_sided_half_width(s, k, alpha, n_star) for s, k in zip(se, n, strict=True)]
        np.testing.assert_allclose(vec, expected, rtol=1e-12)
        scalar = cs_half_width(float(se[0]), float(n[0]), alpha=alpha, n_star=n_star, one_sided=True)
        assert isinstance(scalar, float)
        assert scalar == pytest.approx(expected[0], rel=1e-12)


def test_one_sided_multiplier_at_n_star() -> None:
    # At N = N*, α = 0.025: ≈ 3.09 SE against 1.96 for the fixed one-sided test (≈ 2.5× the variance).
    hw = cs_half_width(1.0, 20_000, alpha=0.025, n_star=20_000, one_sided=True)
    assert hw == pytest.approx(_reference_one_sided_half_width(1.0, 20_000, 0.025, 20_000))
    assert 3.0 < hw < 3.2
    # Wider than the two-sided CS at 2α (the "1 +" inside the log), much narrower than no correction at all.
    assert hw > cs_half_width(1.0, 20_000, alpha=0.05, n_star=20_000)


def test_one_sided_intervals_have_one_finite_end() -> None:
    harm = one_sided_confidence_sequence(-0.1, 0.02, 20_000, n_star=20_000, alpha=0.025, side="lesser")
    assert harm.lower == -math.inf
    assert harm.upper == pytest.approx(-0.1 + harm.half_width)
    assert harm.bound == harm.upper
    assert harm.excludes(0.0)
    win = one_sided_confidence_sequence(0.1, 0.02, 20_000, n_star=20_000, alpha=0.025, side="greater")
    assert win.upper == math.inf
    assert win.lower == pytest.approx(0.1 - win.half_width)
    assert win.excludes(0.0)
    assert win.half_width == harm.half_width
    small = one_sided_confidence_sequence(-0.01, 0.02, 20_000, n_star=20_000)
    assert not small.excludes(0.0)


@pytest.mark.parametrize("alpha", [0.5, 0.7, 1.0, 0.0, -0.1, float("nan")])
def test_one_sided_refuses_alpha_at_or_above_one_half(alpha: float) -> None:
    with pytest.raises(ValueError, match="alpha"):
        one_sided_confidence_sequence(0.0, 0.1, 100, n_star=100, alpha=alpha)
    with pytest.raises(ValueError, match="alpha"):
        one_sided_sequential_p_value(0.0, 0.1, 100, n_star=100, alpha=alpha)
    with pytest.raises(ValueError, match="alpha"):
        cs_half_width(0.1, 100, alpha=alpha, n_star=100, one_sided=True)


def test_bad_inputs_raise_value_error_naming_them() -> None:
    cases = [
        (lambda: confidence_sequence(0.1, 0.1, 100, n_star=0), "n_star"),
        (lambda: one_sided_confidence_sequence(0.0, 0.1, 100, n_star=0), "n_star"),
        (lambda: one_sided_confidence_sequence(0.0, 0.1, 100, n_star=float("inf")), "n_star"),
        (lambda: one_sided_confidence_sequence(0.0, -0.1, 100, n_star=100), "se"),
        (lambda: one_sided_confidence_sequence(float("nan"), 0.1, 100, n_star=100), "expected"),
        (lambda: one_sided_confidence_sequence(0.0, 0.1, 0, n_star=100), "n_total"),
        (lambda: one_sided_confidence_sequence(0.0, 0.1, 100, n_star=100, side="both"), "side"),  # type: ignore[arg-type]
    ]
    for call, name in cases:
        with pytest.raises(ValueError, match=name):
            call()


def test_one_sided_cs_width_is_smallest_near_n_star() -> None:
    def width(n_star: float) -> float:
        return one_sided_confidence_sequence(0.0, 1.0, 6461, n_star=n_star, alpha=0.025).half_width

    assert width(6461) < width(10_000) < width(10)
    # And as a function of N for a fixed N*: the multiplier hw/SE is smallest close to N = N*.
    n = np.array([646.1, 3000, 6461, 15_000, 64_610])
    multiplier = cs_half_width(np.ones(5), n, alpha=0.025, n_star=6461, one_sided=True)
    assert int(np.argmin(multiplier)) == 2


# --- one-sided sequential p-value -------------------------------------------------------------------------


def test_p_value_is_where_the_bound_touches_zero() -> None:
    est, se, n, n_star, alpha = -0.05, 0.02, 20_000, 20_000, 0.025
    result = one_sided_sequential_p_value(est, se, n, n_star=n_star, alpha=alpha)
    assert result.error is None
    assert result.p_value is not None
    assert P_VALUE_MIN_ALPHA < result.p_value < P_VALUE_MAX_ALPHA
    # ρ stays at the design alpha; only the log term moves with the bisected α.
    rho = sequential_rho(alpha, n_star, one_sided=True)
    bound = est + cs_half_width(se, n, alpha=result.p_value, n_star=n_star, one_sided=True, rho=rho)
    assert abs(bound) < 1e-6
    # The win side mirrors the harm side.
    win = one_sided_sequential_p_value(-est, se, n, n_star=n_star, alpha=alpha, side="greater")
    assert win.p_value == pytest.approx(result.p_value, abs=1e-9)


def test_p_value_ends_and_not_converged() -> None:
    # Far past the small end: rejected even at α = 1e-5.
    assert one_sided_sequential_p_value(-1.0, 0.01, 20_000, n_star=20_000).p_value == P_VALUE_MIN_ALPHA
    # Wrong direction for a harm test: 0 stays inside even at α = 0.4999.
    assert one_sided_sequential_p_value(0.2, 0.01, 20_000, n_star=20_000).p_value == P_VALUE_MAX_ALPHA
    assert one_sided_sequential_p_value(-0.2, 0.01, 20_000, n_star=20_000, side="greater").p_value == (
        P_VALUE_MAX_ALPHA
    )


def test_p_value_not_converged_is_reported_not_guessed(monkeypatch: pytest.MonkeyPatch) -> None:
    # With a sane tolerance the bisection converges in ~20-50 steps; starve it to reach the failure path.
    converged = one_sided_sequential_p_value(-0.07, 0.02, 20_000, n_star=20_000)
    assert converged.error is None
    assert converged.iterations > 3
    monkeypatch.setattr(confidence_sequences, "P_VALUE_MAX_ITERATIONS", 3)
    result = one_sided_sequential_p_value(-0.07, 0.02, 20_000, n_star=20_000)
    assert result.p_value is None
    assert result.error == NUMERICAL_PVALUE_NOT_CONVERGED
    assert result.iterations == 3


def test_p_value_is_monotone_in_the_effect() -> None:
    p = []
    for est in np.linspace(-0.12, -0.02, 11):
        result = one_sided_sequential_p_value(float(est), 0.02, 20_000, n_star=20_000)
        assert result.p_value is not None
        p.append(result.p_value)
    assert all(a <= b for a, b in itertools.pairwise(p))


def test_one_sided_p_value_and_cs_agree_over_random_inputs() -> None:
    rng = np.random.default_rng(150)
    checked = rejected = 0
    for _ in range(1500):
        alpha = float(rng.choice([0.001, 0.01, 0.025, 0.05, 0.1, 0.2]))
        side: Side = "lesser" if rng.random() < 0.5 else "greater"
        n_star = float(rng.choice([500, 5000, 20_000, 200_000]))
        n = int(rng.integers(10, 100_000))
        se = float(rng.uniform(0.001, 0.1))
        est = float(rng.normal(0.0, 4.0 * se))
        cs = one_sided_confidence_sequence(est, se, n, n_star=n_star, alpha=alpha, side=side)
        result = one_sided_sequential_p_value(est, se, n, n_star=n_star, alpha=alpha, side=side)
        assert result.error is None
        assert result.p_value is not None
        if abs(cs.bound) < 1e-6:
            continue  # within the bisection tolerance of the boundary either answer is right
        assert (result.p_value <= alpha) == cs.excludes(0.0), (est, se, n, n_star, alpha, side, result)
        checked += 1
        rejected += cs.excludes(0.0)
    assert checked > 1450
    assert 100 < rejected < checked - 100  # both outcomes exercised
