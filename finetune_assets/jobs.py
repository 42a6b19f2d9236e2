"""The two jobs of a cycle: train-to-experiment (scheduled or sensed) and decide-and-promote (sensed)."""

import dagster as dg

from finetune_assets.assets import (
    ab_test,
    ab_test_outcome,
    evaluation_scores,
    fine_tuned_model,
    production_model,
    training_data,
)

finetune_cycle_job = dg.define_asset_job(
    "finetune_cycle_job",
    selection=[training_data, fine_tuned_model, evaluation_scores, ab_test],
    description="Collect examples, fine-tune, evaluate against production and start the A/B test.",
    tags={"finetune_assets/kind": "training"},
)

ab_test_decision_job = dg.define_asset_job(
    "ab_test_decision_job",
    selection=[ab_test_outcome, production_model],
    description="Decide a finished A/B test and promote the winner.",
)
