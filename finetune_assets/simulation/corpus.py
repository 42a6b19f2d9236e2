"""The synthetic historical corpus: demo users, their prompts, a "production" writer and scored posts.

SIMULATION ONLY: every user, prompt, post and count here is a demo stand-in for real users (see
`SIMULATION_LABEL`). It fills the `generated_posts` table for the embedded demo, which has no real users and
no internet, with rows shaped exactly like production rows, including the malformed ones the ingestion code
must survive.

The users, their prompts and the writer are `writer`; this module turns them into scored rows.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from finetune_assets.simulation.engagement import HiddenEngagementModel
from finetune_assets.simulation.writer import (
    DemoUser,
    Message,
    make_prompt,
    make_users,
    pick,
    write_post,
)

GENERATED_POSTS_COLUMNS: tuple[str, ...] = (
    "post_id",
    "created_at",
    "user_id",
    "model_id",
    "experiment_id",
    "variant",
    "prompt_messages",
    "completion",
    "impressions",
    "engagements",
    "updated_at",
)
"""The columns of every row this package produces, in table order."""

DEFECT_KINDS: tuple[str, ...] = (
    "completion_none",
    "completion_blank",
    "negative_impressions",
    "engagements_exceed_impressions",
    "prompt_invalid_json",
    "prompt_not_messages",
    "completion_oversized",
    "duplicate",
)
"""Malformed-row kinds injected into the corpus, as real tables accumulate them."""

OVERSIZED_COMPLETION_CHARS = 20_000

IMPRESSIONS_MEAN = 400.0
IMPRESSIONS_SHAPE = 0.9
"""Negative-binomial shape: below 1, so reach is heavy-tailed (many small posts, a few viral ones)."""


def engagement_counts(
    text: str, user: DemoUser, audience_rng: np.random.Generator, hidden: HiddenEngagementModel
) -> tuple[int, int]:
    """(impressions, engagements) for one post: 1 + NegBin reach (mean ~400), Binomial engagements.

    Shared by the historical corpus and A/B traffic so both are scored by the same hidden model.
    """
    n = IMPRESSIONS_SHAPE
    impressions = 1 + int(audience_rng.negative_binomial(n, n / (n + IMPRESSIONS_MEAN - 1.0)))
    engagements = int(audience_rng.binomial(impressions, hidden.probability(text, user.effect)))
    return impressions, engagements


@dataclass(frozen=True)
class DemoWorldConfig:
    """The simulated world behind the demo's historical `generated_posts` table."""

    seed: int = 7
    n_users: int = 400
    n_posts: int = 3000
    history_days: int = 21
    bad_row_fraction: float = 0.02
    model_id: str = "base:demo-tiny-gpt2"


def utc(moment: datetime, name: str) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware (got naive {moment!r})")
    return moment.astimezone(UTC)


def _world_seeds(config: DemoWorldConfig) -> list[np.random.SeedSequence]:
    """Independent streams (users, authors/times, writer, audience, defects): changing one knob, e.g.
    n_posts, leaves the user population unchanged."""
    return np.random.SeedSequence(config.seed).spawn(5)


def world_users(config: DemoWorldConfig) -> list[DemoUser]:
    """The users `generate_corpus(config, ...)` posts as: use them for A/B traffic in the same world."""
    return make_users(config.n_users, np.random.default_rng(_world_seeds(config)[0]))


def _defect_plan(n_posts: int, fraction: float, rng: np.random.Generator) -> dict[int, str]:
    """Row index -> defect kind; kinds cycle so each appears about equally (all of them once n >= 8)."""
    n_bad = min(round(fraction * n_posts), max(n_posts - 1, 0))
    if n_bad <= 0:
        return {}
    rows = np.sort(rng.choice(np.arange(1, n_posts), size=n_bad, replace=False))
    kinds = [DEFECT_KINDS[i % len(DEFECT_KINDS)] for i in range(n_bad)]
    order = rng.permutation(n_bad)
    return {int(rows[i]): kinds[int(order[i])] for i in range(n_bad)}


def _not_messages(prompt: list[Message], rng: np.random.Generator) -> str:
    variants: list[Any] = [
        {"messages": prompt},
        [m["content"] for m in prompt],
        [{"role": m["role"], "text": m["content"]} for m in prompt],
    ]
    return json.dumps(variants[int(rng.integers(len(variants)))], ensure_ascii=False)


def generate_corpus(
    config: DemoWorldConfig,
    *,
    now: datetime,
    first_post_id: int = 1,
    hidden: HiddenEngagementModel | None = None,
) -> Iterator[dict[str, Any]]:
    """Historical `generated_posts` rows (SIMULATED), oldest first, spread over `history_days` before `now`.

    About `bad_row_fraction` of the rows carry one of `DEFECT_KINDS`. The same config (and `now`) always
    yields the same rows.
    """
    now = utc(now, "now")
    hidden = hidden or HiddenEngagementModel()
    _, time_seed, writer_seed, audience_seed, defect_seed = _world_seeds(config)
    users = world_users(config)
    time_rng = np.random.default_rng(time_seed)
    writer_rng = np.random.default_rng(writer_seed)
    audience_rng = np.random.default_rng(audience_seed)
    defect_rng = np.random.default_rng(defect_seed)

    activity = np.array([u.activity for u in users])
    authors = time_rng.choice(len(users), size=config.n_posts, p=activity / activity.sum())
    window_s = config.history_days * 86_400
    offsets = np.sort(np.floor(time_rng.uniform(0, window_s, size=config.n_posts)))
    delays_s = np.floor(time_rng.uniform(3_600, 72 * 3_600, size=config.n_posts))
    start = now - timedelta(seconds=window_s)
    defects = _defect_plan(config.n_posts, config.bad_row_fraction, defect_rng)
    clean: list[tuple[DemoUser, str, str]] = []

    for i in range(config.n_posts):
        user = users[int(authors[i])]
        prompt = make_prompt(user, writer_rng)
        completion: str | None = write_post(prompt, writer_rng)
        prompt_json = json.dumps(prompt, ensure_ascii=False)
        defect = defects.get(i)
        if defect == "duplicate" and clean:
            user, prompt_json, completion = clean[int(defect_rng.integers(len(clean)))]
        elif defect == "completion_none":
            completion = None
        elif defect == "completion_blank":
            completion = pick(defect_rng, ("", " ", "\n\n", "   \t"))
        elif defect == "completion_oversized":
            assert completion is not None
            completion = " ".join([completion] * (OVERSIZED_COMPLETION_CHARS // (len(completion) + 1) + 2))
        elif defect == "prompt_invalid_json":
            prompt_json = prompt_json[: len(prompt_json) // 2] if defect_rng.random() < 0.5 else str(prompt)
        elif defect == "prompt_not_messages":
            prompt_json = _not_messages(prompt, defect_rng)
        elif defect is None:
            assert completion is not None
            clean.append((user, prompt_json, completion))

        impressions, engagements = engagement_counts(completion or "", user, audience_rng, hidden)
        if defect == "negative_impressions":
            impressions, engagements = -int(defect_rng.integers(1, 500)), 0
        elif defect == "engagements_exceed_impressions":
            engagements = impressions + int(defect_rng.integers(1, 50))

        created_at = start + timedelta(seconds=float(offsets[i]))
        yield {
            "post_id": first_post_id + i,
            "created_at": created_at,
            "user_id": user.user_id,
            "model_id": config.model_id,
            "experiment_id": None,
            "variant": None,
            "prompt_messages": prompt_json,
            "completion": completion,
            "impressions": impressions,
            "engagements": engagements,
            "updated_at": min(now, created_at + timedelta(seconds=float(delays_s[i]))),
        }
