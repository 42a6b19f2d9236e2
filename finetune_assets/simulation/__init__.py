"""A simulated world for the embedded demo: SIMULATED users, posts and engagement, never real data.

Everything this package produces is a demo stand-in for real users (`SIMULATION_LABEL`): a hidden
engagement model (the ground truth nobody else sees), a historical `generated_posts` corpus written by a
mixed-style "production" writer, and an audience that posts and engages during A/B tests.
"""

from finetune_assets.simulation.audience import PlannedPost, plan_traffic, score_traffic
from finetune_assets.simulation.corpus import (
    DEFECT_KINDS,
    GENERATED_POSTS_COLUMNS,
    DemoWorldConfig,
    engagement_counts,
    generate_corpus,
    world_users,
)
from finetune_assets.simulation.engagement import SIMULATION_LABEL, HiddenEngagementModel, count_emojis
from finetune_assets.simulation.writer import (
    GOOD_STYLES,
    HISTORICAL_STYLE_WEIGHTS,
    STYLES,
    DemoUser,
    make_prompt,
    make_users,
    write_post,
)

__all__ = [
    "DEFECT_KINDS",
    "GENERATED_POSTS_COLUMNS",
    "GOOD_STYLES",
    "HISTORICAL_STYLE_WEIGHTS",
    "SIMULATION_LABEL",
    "STYLES",
    "DemoUser",
    "DemoWorldConfig",
    "HiddenEngagementModel",
    "PlannedPost",
    "count_emojis",
    "engagement_counts",
    "generate_corpus",
    "make_prompt",
    "make_users",
    "plan_traffic",
    "score_traffic",
    "world_users",
    "write_post",
]
