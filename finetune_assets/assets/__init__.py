"""The asset graph: generated_posts → training_data → fine_tuned_model → evaluation_scores → ab_test →
ab_test_outcome → production_model."""

import dagster as dg

from finetune_assets.assets.evaluation import evaluation_scores
from finetune_assets.assets.experiment import ab_test, ab_test_outcome
from finetune_assets.assets.model import fine_tuned_model
from finetune_assets.assets.promotion import production_model
from finetune_assets.assets.training_data import generated_posts, training_data

ALL_ASSETS: list[dg.AssetsDefinition | dg.AssetSpec] = [
    generated_posts,
    training_data,
    fine_tuned_model,
    evaluation_scores,
    ab_test,
    ab_test_outcome,
    production_model,
]

__all__ = [
    "ALL_ASSETS",
    "ab_test",
    "ab_test_outcome",
    "evaluation_scores",
    "fine_tuned_model",
    "generated_posts",
    "production_model",
    "training_data",
]
