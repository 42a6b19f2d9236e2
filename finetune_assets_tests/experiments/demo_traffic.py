"""SIMULATED A/B traffic of the demo world, fast enough for hundreds of experiments (demo stand-in for users).

The demo world's users (`world_users`), their posting activity and reach, and the hidden engagement model's
text effects (a pool of posts by the historical writer) — but no text generation: the candidate's quality
is a known multiplier on the engagement probability, so an error rate can be measured against the truth.
Users are assigned by the experiment's own salt (`assign_many`, the router's hash, vectorized).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np

from finetune_assets.experiments.runtime.assignment import NOT_ENROLLED_CODE, TREATMENT_CODE, assign_many
from finetune_assets.simulation import DemoWorldConfig
from finetune_assets.simulation.corpus import IMPRESSIONS_MEAN, IMPRESSIONS_SHAPE, world_users
from finetune_assets.simulation.engagement import HiddenEngagementModel
from finetune_assets.simulation.writer import DemoUser, make_prompt, write_post
from finetune_assets.store.records import ExperimentRecord


@dataclass(frozen=True)
class DemoAudience:
    users: tuple[DemoUser, ...]
    text_logits: np.ndarray
    """The hidden model's text effect of a pool of historical posts; each simulated post draws one."""
    base: float
    active_fraction: float = 0.6
    posts_per_user_mean: float = 2.0

    @classmethod
    def of(cls, world: DemoWorldConfig, pool_size: int = 300, seed: int = 0) -> DemoAudience:
        users = tuple(world_users(world))
        rng = np.random.default_rng(seed)
        hidden = HiddenEngagementModel()
        picks = rng.integers(0, len(users), size=pool_size)
        logits = np.array([hidden.text_logit(write_post(make_prompt(users[i], rng), rng)) for i in picks])
        return cls(users, logits, hidden.base)

    def window_posts(
        self,
        experiment: ExperimentRecord,
        *,
        treatment_multiplier: float,
        rng: np.random.Generator,
        first_post_id: int,
    ) -> list[dict[str, Any]]:
        """Every post of the experiment's window (oldest first): `generated_posts` rows, SIMULATED counts."""
        start = experiment.started_at
        seconds = (experiment.ends_at - start).total_seconds()
        n_users = len(self.users)
        activity = np.array([u.activity for u in self.users])
        effect = np.array([u.effect for u in self.users])
        active = rng.random(n_users) < self.active_fraction
        n_posts = np.where(active, rng.poisson(self.posts_per_user_mean * activity), 0)
        arms = assign_many(
            [u.user_id for u in self.users],
            experiment.salt,
            split=experiment.split,
            coverage=experiment.coverage,
        )
        n_posts[arms == NOT_ENROLLED_CODE] = 0
        who = np.repeat(np.arange(n_users), n_posts)
        first = np.concatenate([[True], who[1:] != who[:-1]]) if len(who) else np.zeros(0, dtype=bool)
        arrival = np.repeat(rng.uniform(0.0, seconds, size=n_users), n_posts)
        offsets = np.where(first, arrival, arrival + rng.random(len(who)) * (seconds - arrival))
        treated = arms[who] == TREATMENT_CODE
        p = 1.0 / (1.0 + np.exp(-(self.base + rng.choice(self.text_logits, size=len(who)) + effect[who])))
        p = np.where(treated, np.minimum(p * treatment_multiplier, 1.0), p)
        shape = IMPRESSIONS_SHAPE
        impressions = 1 + rng.negative_binomial(shape, shape / (shape + IMPRESSIONS_MEAN - 1.0), size=len(who))
        engagements = rng.binomial(impressions, p)
        order = np.argsort(offsets, kind="stable")
        models = (experiment.control_model, experiment.treatment_model)
        rows = []
        for i, k in enumerate(order):
            created = start + timedelta(seconds=math.floor(offsets[k]))
            rows.append(
                {
                    "post_id": first_post_id + i,
                    "created_at": created,
                    "user_id": self.users[who[k]].user_id,
                    "model_id": models[int(treated[k])],
                    "experiment_id": experiment.experiment_id,
                    "variant": "treatment" if treated[k] else "control",
                    "impressions": int(impressions[k]),
                    "engagements": int(engagements[k]),
                    "updated_at": created + timedelta(hours=6),
                }
            )
        return rows
