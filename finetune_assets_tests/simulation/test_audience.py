"""A/B traffic: planning respects the assignment and window; scoring finds the good-style writer's effect."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from finetune_assets.simulation import (
    GENERATED_POSTS_COLUMNS,
    GOOD_STYLES,
    DemoUser,
    DemoWorldConfig,
    HiddenEngagementModel,
    PlannedPost,
    plan_traffic,
    score_traffic,
    world_users,
    write_post,
)

START = datetime(2025, 3, 2, 9, 0, tzinfo=UTC)
HOURS = 48


@pytest.fixture(scope="module")
def users() -> list[DemoUser]:
    return world_users(DemoWorldConfig())


def _assign(user_id: str) -> str | None:
    number = int(user_id.rsplit("-", 1)[1])
    return None if number % 3 == 0 else ("treatment" if number % 2 else "control")


def _plan(users: list[DemoUser], seed: int = 5) -> list[PlannedPost]:
    return plan_traffic(users, start=START, hours=HOURS, assign=_assign, rng=np.random.default_rng(seed))


def test_plan_respects_assignment_and_window(users: list[DemoUser]) -> None:
    calls: list[str] = []

    def assign(user_id: str) -> str | None:
        calls.append(user_id)
        return _assign(user_id)

    planned = plan_traffic(users, start=START, hours=HOURS, assign=assign, rng=np.random.default_rng(5))
    assert planned
    assert len(calls) == len(set(calls)) < len(users)  # once per active poster, never for inactive users
    for post in planned:
        assert post.variant is not None and post.variant == _assign(post.user_id)
        assert START <= post.created_at < START + timedelta(hours=HOURS)
        assert [m["role"] for m in post.prompt_messages] == ["system", "user"]
    assert [p.created_at for p in planned] == sorted(p.created_at for p in planned)
    assert {p.variant for p in planned} == {"control", "treatment"}
    enrolled = {p.user_id for p in planned}
    assert enrolled <= {c for c in calls if _assign(c) is not None}


def test_plan_volume_and_determinism(users: list[DemoUser]) -> None:
    everyone = plan_traffic(users, start=START, hours=HOURS, assign=lambda _: "a", rng=np.random.default_rng(5))
    expected = len(users) * 0.6 * 2.0
    assert 0.75 * expected <= len(everyone) <= 1.25 * expected
    assert everyone == plan_traffic(users, start=START, hours=HOURS, assign=lambda _: "a", rng=np.random.default_rng(5))
    # A user's plan does not depend on how the others were assigned.
    enrolled_only = {p.user_id: p for p in _plan(users)}
    for post in everyone:
        if post.user_id in enrolled_only and enrolled_only[post.user_id].created_at == post.created_at:
            assert enrolled_only[post.user_id].prompt_messages == post.prompt_messages
    assert {p.created_at for p in _plan(users)} <= {p.created_at for p in everyone}


def test_plan_rejects_bad_arguments(users: list[DemoUser]) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        plan_traffic(users, start=datetime(2025, 1, 1), hours=1, assign=_assign, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="hours"):
        plan_traffic(users, start=START, hours=0, assign=_assign, rng=np.random.default_rng(0))


def test_score_rows(users: list[DemoUser]) -> None:
    planned = _plan(users)
    rng = np.random.default_rng(6)
    completions = [write_post(p.prompt_messages, rng) for p in planned]
    model_ids = {"control": "base:demo-tiny-gpt2", "treatment": "ft:demo-tiny-gpt2:lora-1"}
    rows = list(
        score_traffic(
            planned,
            completions,
            users_by_id={u.user_id: u for u in users},
            model_ids=model_ids,
            experiment_id="exp-1",
            hidden=HiddenEngagementModel(),
            rng=np.random.default_rng(7),
            first_post_id=5001,
        )
    )
    assert [r["post_id"] for r in rows] == list(range(5001, 5001 + len(planned)))
    for row, post, completion in zip(rows, planned, completions, strict=True):
        assert tuple(row) == GENERATED_POSTS_COLUMNS
        assert row["experiment_id"] == "exp-1" and row["variant"] == post.variant
        assert row["model_id"] == model_ids[post.variant]
        assert row["user_id"] == post.user_id and row["created_at"] == post.created_at
        assert row["completion"] == completion and isinstance(row["prompt_messages"], str)
        assert row["impressions"] >= 1 and 0 <= row["engagements"] <= row["impressions"]
        assert row["updated_at"] > row["created_at"]


def test_score_rejects_mismatches(users: list[DemoUser]) -> None:
    planned = _plan(users)[:3]
    by_id = {u.user_id: u for u in users}

    def score(completions: list[str], model_ids: dict[str, str]) -> None:
        list(
            score_traffic(
                planned,
                completions,
                users_by_id=by_id,
                model_ids=model_ids,
                experiment_id="exp-1",
                hidden=HiddenEngagementModel(),
                rng=np.random.default_rng(0),
                first_post_id=1,
            )
        )

    with pytest.raises(ValueError, match="completions"):
        score(["x"], {"control": "m", "treatment": "m"})
    with pytest.raises(ValueError, match="model id"):
        score(["x"] * 3, {})


def test_good_style_writer_earns_more(users: list[DemoUser]) -> None:
    """Same planned posts, same audience draws: the good-style writer's aggregate rate is clearly higher."""
    planned = plan_traffic(users, start=START, hours=HOURS, assign=lambda _: "arm", rng=np.random.default_rng(9))
    hidden = HiddenEngagementModel()
    by_id = {u.user_id: u for u in users}

    def aggregate_rate(style_weights: dict[str, float] | None) -> float:
        rng = np.random.default_rng(10)
        completions = [write_post(p.prompt_messages, rng, style_weights=style_weights) for p in planned]
        rows = list(
            score_traffic(
                planned,
                completions,
                users_by_id=by_id,
                model_ids={"arm": "m"},
                experiment_id="exp",
                hidden=hidden,
                rng=np.random.default_rng(11),
                first_post_id=1,
            )
        )
        return sum(r["engagements"] for r in rows) / sum(r["impressions"] for r in rows)

    historical = aggregate_rate(None)
    good = aggregate_rate(dict.fromkeys(GOOD_STYLES, 1.0))
    assert good > 1.2 * historical, (good, historical)
