"""The historical corpus: deterministic, table-shaped, calibrated, with every defect kind injected."""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pytest

from finetune_assets.simulation import (
    DEFECT_KINDS,
    GENERATED_POSTS_COLUMNS,
    STYLES,
    DemoWorldConfig,
    HiddenEngagementModel,
    generate_corpus,
    make_prompt,
    make_users,
    world_users,
    write_post,
)

from .conftest import NOW
from .helpers import MIN_IMPRESSIONS, MIN_RATE, classify

SMALL = DemoWorldConfig(n_users=50, n_posts=400, bad_row_fraction=0.05)


def test_same_config_same_rows() -> None:
    assert list(generate_corpus(SMALL, now=NOW)) == list(generate_corpus(SMALL, now=NOW))


def test_other_seed_other_rows() -> None:
    a = list(generate_corpus(SMALL, now=NOW))
    b = list(generate_corpus(DemoWorldConfig(seed=8, n_users=50, n_posts=400), now=NOW))
    assert [r["completion"] for r in a] != [r["completion"] for r in b]


def test_users_do_not_depend_on_post_count() -> None:
    assert world_users(SMALL) == world_users(DemoWorldConfig(n_users=50, n_posts=10))


def test_naive_now_is_rejected() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        next(generate_corpus(SMALL, now=datetime(2025, 1, 1)))


def test_users() -> None:
    users = make_users(400, np.random.default_rng(0))
    assert len({u.user_id for u in users}) == 400
    effects = np.array([u.effect for u in users])
    assert abs(effects.mean()) < 0.08 and 0.3 < effects.std() < 0.5
    assert 0.8 < np.mean([u.activity for u in users]) < 1.2
    assert all(u.activity > 0 and 2 <= len(u.topics) <= 3 and u.brand for u in users)


def test_prompts_are_short_system_plus_user() -> None:
    rng = np.random.default_rng(1)
    for user in make_users(20, rng):
        prompt = make_prompt(user, rng)
        assert [m["role"] for m in prompt] == ["system", "user"]
        assert user.brand in prompt[0]["content"]
        assert any(topic in prompt[1]["content"] for topic in user.topics)
        assert sum(len(m["content"].split()) for m in prompt) < 60


def test_styles_have_intended_lengths_and_no_degenerate_text() -> None:
    rng = np.random.default_rng(2)
    hidden = HiddenEngagementModel()
    users = make_users(30, rng)
    for style in STYLES:
        for user in users:
            text = write_post(make_prompt(user, rng), rng, style_weights={style: 1.0})
            words = len(text.split())
            assert (100 <= words <= 200) if style == "essay" else (12 <= words <= 75), (style, text)
            assert not {"garbled", "repetitive", "empty"} & set(hidden.features(text)), text


def test_writer_follows_the_prompt_mention() -> None:
    rng = np.random.default_rng(3)
    prompt = [
        {
            "role": "system",
            "content": "You write engaging social posts for Maple Bakery, a family bakery. Keep it short.",
        },
        {
            "role": "user",
            "content": "Write a short post about sourdough Saturdays for our customers. Mention fresh rye bread.",
        },
    ]
    texts = [write_post(prompt, rng) for _ in range(50)]
    assert sum("rye bread" in t.lower() for t in texts) >= 45
    assert write_post([{"role": "user", "content": "anything"}], rng)  # free-form prompts still get a post


def test_columns_and_types(default_corpus: list[dict[str, Any]]) -> None:
    config = DemoWorldConfig()
    assert len(default_corpus) == config.n_posts
    assert [r["post_id"] for r in default_corpus] == list(range(1, config.n_posts + 1))
    window_start = NOW - timedelta(days=config.history_days)
    for row in default_corpus:
        assert tuple(row) == GENERATED_POSTS_COLUMNS
        assert isinstance(row["post_id"], int)
        for column in ("created_at", "updated_at"):
            assert isinstance(row[column], datetime) and row[column].utcoffset() == timedelta(0)
        assert window_start <= row["created_at"] < NOW
        assert row["created_at"] <= row["updated_at"] <= NOW
        assert isinstance(row["user_id"], str) and row["user_id"]
        assert row["model_id"] == config.model_id
        assert row["experiment_id"] is None and row["variant"] is None
        assert isinstance(row["prompt_messages"], str)
        assert row["completion"] is None or isinstance(row["completion"], str)
        assert isinstance(row["impressions"], int) and isinstance(row["engagements"], int)
    created = [r["created_at"] for r in default_corpus]
    assert created == sorted(created)


def test_every_defect_kind_is_injected(default_corpus: list[dict[str, Any]]) -> None:
    config = DemoWorldConfig()
    counts = Counter(kind for kind in classify(default_corpus) if kind is not None)
    assert set(counts) == set(DEFECT_KINDS)
    expected = config.bad_row_fraction * config.n_posts
    assert abs(sum(counts.values()) - expected) <= 0.1 * expected
    assert max(counts.values()) - min(counts.values()) <= 1  # roughly even
    assert all(row["engagements"] >= 0 for row in default_corpus)


def test_clean_rows_are_well_formed(default_corpus: list[dict[str, Any]]) -> None:
    for row, kind in zip(default_corpus, classify(default_corpus), strict=True):
        if kind is None:
            assert row["impressions"] >= 1 and 0 <= row["engagements"] <= row["impressions"]
            assert [m["role"] for m in json.loads(row["prompt_messages"])] == ["system", "user"]


def test_calibration(default_corpus: list[dict[str, Any]]) -> None:
    """Mean rate 5-6 %; 20-30 % of posts with >= 100 impressions qualify; reach ~400, heavy tail."""
    clean = [row for row, kind in zip(default_corpus, classify(default_corpus), strict=True) if kind is None]
    impressions = np.array([r["impressions"] for r in clean])
    rates = np.array([r["engagements"] / r["impressions"] for r in clean])
    assert 0.05 <= rates.mean() <= 0.06, rates.mean()
    aggregate = sum(r["engagements"] for r in clean) / impressions.sum()
    assert 0.05 <= aggregate <= 0.06, aggregate
    seen = impressions >= MIN_IMPRESSIONS
    qualifying_share = float((rates[seen] >= MIN_RATE).mean())
    assert 0.20 <= qualifying_share <= 0.30, qualifying_share
    assert 300 <= int((rates[seen] >= MIN_RATE).sum()) <= 800
    assert 340 <= impressions.mean() <= 460, impressions.mean()
    assert np.percentile(impressions, 99) > 4 * np.median(impressions)
