"""Shared fixtures: one default-config corpus per session (generating it takes about half a second)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from finetune_assets.simulation import DemoWorldConfig, generate_corpus

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="session")
def default_corpus() -> list[dict[str, Any]]:
    return list(generate_corpus(DemoWorldConfig(), now=NOW))
