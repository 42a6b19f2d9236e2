"""Fixed-horizon sample size of a two-proportion test with a design effect."""

from __future__ import annotations

import pytest

from finetune_assets.experiments.stats.power import required_impressions_per_arm


def test_required_impressions_per_arm_matches_the_formula_table() -> None:
    # Impressions per arm from the closed form, rounded up: 6 % baseline, two-sided 0.05, power 0.8.
    table = {
        0.02: (620_577, 1_054_981, 1_861_731),
        0.05: (100_667, 171_134, 302_001),
        0.10: (25_736, 43_752, 77_209),
    }
    for mde, row in table.items():
        for de, expected in zip((1.0, 1.7, 3.0), row, strict=True):
            assert expected <= required_impressions_per_arm(0.06, mde, design_effect=de) <= expected + 1


def test_bad_arguments_raise_value_error_naming_the_argument() -> None:
    with pytest.raises(ValueError, match="relative_mde"):
        required_impressions_per_arm(0.06, 0.0)
