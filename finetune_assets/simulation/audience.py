"""The simulated audience for A/B traffic (demo stand-in for real users).

SIMULATION ONLY. In production, real users arrive, get assigned to a variant and post; here demo users do.
Traffic is planned first (who posts what prompt when, in which variant) so the caller can generate all
completions of a variant in a few large batches - generation is the expensive part - and then scored by
the same hidden engagement model that scored the historical corpus, so an A/B test measures a real effect.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from finetune_assets.simulation.corpus import engagement_counts, utc
from finetune_assets.simulation.engagement import HiddenEngagementModel
from finetune_assets.simulation.writer import DemoUser, Message, make_prompt


@dataclass(frozen=True)
class PlannedPost:
    """One post a simulated user will write during the experiment, before its completion exists."""

    user_id: str
    created_at: datetime
    prompt_messages: list[Message]
    variant: str


def plan_traffic(
    users: Sequence[DemoUser],
    *,
    start: datetime,
    hours: int,
    assign: Callable[[str], str | None],
    rng: np.random.Generator,
    posts_per_user_mean: float = 2.0,
    active_fraction: float = 0.6,
) -> list[PlannedPost]:
    """Posts of the enrolled users over [start, start + hours), oldest first.

    Each user is active with probability `active_fraction`; an active user arrives uniformly in the window
    and writes Poisson(`posts_per_user_mean` x activity) posts, the first at arrival and the rest later in
    the window. `assign(user_id)` is called once per active user who posts; None means not enrolled, and
    that user's posts are skipped. Each user draws from their own child generator, so the plan of one user
    does not depend on how others were assigned.
    """
    if hours <= 0:
        raise ValueError(f"hours must be positive, got {hours}")
    if not 0.0 <= active_fraction <= 1.0:
        raise ValueError(f"active_fraction must be in [0, 1], got {active_fraction}")
    start = utc(start, "start")
    window_s = hours * 3_600.0
    planned: list[PlannedPost] = []
    for user, user_rng in zip(users, rng.spawn(len(users)), strict=True):
        active = user_rng.random() < active_fraction
        arrival = user_rng.uniform(0.0, window_s)
        n_posts = int(user_rng.poisson(posts_per_user_mean * user.activity))
        offsets = [arrival, *np.sort(user_rng.uniform(arrival, window_s, size=max(n_posts - 1, 0)))]
        prompts = [make_prompt(user, user_rng) for _ in range(n_posts)]
        if not active or n_posts == 0:
            continue
        variant = assign(user.user_id)
        if variant is None:
            continue
        planned.extend(
            PlannedPost(
                user_id=user.user_id,
                created_at=start + timedelta(seconds=float(np.floor(offset))),
                prompt_messages=prompt,
                variant=variant,
            )
            for offset, prompt in zip(offsets, prompts, strict=False)
        )
    planned.sort(key=lambda post: post.created_at)
    return planned


def score_traffic(
    planned: Sequence[PlannedPost],
    completions: Sequence[str],
    *,
    users_by_id: Mapping[str, DemoUser],
    model_ids: Mapping[str, str],
    experiment_id: str,
    hidden: HiddenEngagementModel,
    rng: np.random.Generator,
    first_post_id: int,
) -> Iterator[dict[str, Any]]:
    """`generated_posts` rows (SIMULATED counts) for the A/B posts, in `planned` order.

    `completions[i]` is the text the variant's model wrote for `planned[i]`; `model_ids` maps each variant
    to the model that served it. Counts come from `engagement_counts`, as for the historical corpus.
    """
    if len(planned) != len(completions):
        raise ValueError(f"{len(planned)} planned posts but {len(completions)} completions")
    missing = sorted({post.variant for post in planned} - set(model_ids))
    if missing:
        raise ValueError(f"no model id for variant(s) {missing}")
    for i, (post, completion) in enumerate(zip(planned, completions, strict=True)):
        user = users_by_id[post.user_id]
        impressions, engagements = engagement_counts(completion, user, rng, hidden)
        yield {
            "post_id": first_post_id + i,
            "created_at": post.created_at,
            "user_id": post.user_id,
            "model_id": model_ids[post.variant],
            "experiment_id": experiment_id,
            "variant": post.variant,
            "prompt_messages": json.dumps(post.prompt_messages, ensure_ascii=False),
            "completion": completion,
            "impressions": impressions,
            "engagements": engagements,
            "updated_at": post.created_at + timedelta(seconds=float(np.floor(rng.uniform(1_800, 6 * 3_600)))),
        }
