"""`production_model`: the model the app calls after this cycle, in the registry and the routing table."""

import dagster as dg

from finetune_assets.assets.database import lost_connection_is_retried
from finetune_assets.deployment.k8s import k8s_resources
from finetune_assets.experiments.runtime.lifecycle import publish_routing
from finetune_assets.partitions import cycle_asset
from finetune_assets.resources.cache import RedisResource
from finetune_assets.resources.config import PipelineConfigResource
from finetune_assets.resources.store import StoreResource
from finetune_assets.resources.tracking import CHAMPION_ALIAS, TrackingResource
from finetune_assets.settings import Settings
from finetune_assets.store.platform import PlatformStore


def _tag(value: float | None) -> str:
    """A score as a registry tag; n/a where the backend's API cannot compute it (OpenAI: no held-out loss)."""
    return "n/a" if value is None else f"{value:.6f}"


@cycle_asset(
    deps=["ab_test_outcome"],
    kinds={"mlflow"},
    op_tags=k8s_resources(),
)
def production_model(
    context: dg.AssetExecutionContext,
    pipeline: PipelineConfigResource,
    store: StoreResource,
    tracking: TrackingResource,
    redis: RedisResource,
) -> dg.MaterializeResult:
    """Register the candidate with its lineage tags; on a win, move `champion` to it (previous one recorded)
    and tell the content app's routers.

    Every step is idempotent, in an order a crash can resume: the registry version (found again by its
    `model_id` tag), the alias, then the routing row the app reads (one per experiment), then Redis. A run
    that stops after the alias and before the routing row leaves a decided experiment without a promotion:
    `ab_test_sensor` notices it on its next tick and runs this step again."""
    with lost_connection_is_retried(f"production_model of cycle {context.partition_key}"):
        return promote_cycle(context, pipeline.get(), store.get(), tracking, redis)


def promote_cycle(
    context: dg.AssetExecutionContext,
    settings: Settings,
    db: PlatformStore,
    tracking: TrackingResource,
    redis: RedisResource,
) -> dg.MaterializeResult:
    """`production_model`'s work, every read and write of it inside one lost-connection guard."""
    experiment = db.latest_experiment(context.partition_key)
    if experiment is None or experiment.status != "decided":
        raise dg.Failure(f"cycle {context.partition_key}: no decided, valid experiment to act on")
    candidate = experiment.treatment_model
    model = db.latest_model(context.partition_key)
    evaluation = db.latest_evaluation(context.partition_key)
    dataset = db.get_dataset(model.dataset_id) if model else None
    if model is None or evaluation is None or dataset is None or model.model_id != candidate:
        raise dg.Failure(f"cycle {context.partition_key}: candidate {candidate} has no model record to register")
    # A retried promotion (this experiment's row already written) keeps the model it replaced the first time.
    recorded = db.promotion_of(experiment.experiment_id)
    previous_id = recorded.previous_model_id if recorded else db.production_model(default=settings.base_model)
    promote = experiment.decision == "promote"
    result = experiment.details.decision
    scores = evaluation.scores
    tags = {
        "partition": context.partition_key,
        "dataset_hash": dataset.dataset_hash,
        "dataset_id": dataset.dataset_id,
        "job_id": model.job_id,
        "backend": model.backend,
        "base_model": model.base_model,
        "experiment_id": experiment.experiment_id,
        "ab_decision": str(experiment.decision),
        "ab_reason": str(experiment.reason),
        "ab_lift": f"{result.lift if result else None}",
        "eval_candidate_heldout_loss": _tag(scores.candidate.heldout_loss),
        "eval_candidate_predicted_engagement": f"{scores.candidate.predicted_engagement:.6f}",
        "eval_champion_predicted_engagement": f"{scores.champion.predicted_engagement:.6f}",
    }
    source = model.details.artifact_uri or model.model_id
    previous = tracking.champion()
    version = tracking.register(model_id=candidate, source=source, run_id=model.details.mlflow_run_id, tags=tags)
    if promote:
        tracking.promote(version, previous, previous_id)
    db.record_promotion(
        experiment_id=experiment.experiment_id,
        model_id=candidate if promote else previous_id,
        previous_model_id=previous_id,
        registry_version=version.version,
        promoted=promote,
    )
    in_production = db.production_model(default=settings.base_model)
    publish_routing(redis, db, settings.base_model, context.log.warning)
    context.log.info(
        f"{'promoted' if promote else 'kept'}: {in_production} serves traffic "
        f"(registry {version.name} v{version.version}{', alias ' + CHAMPION_ALIAS if promote else ''})"
    )
    return dg.MaterializeResult(
        metadata={
            "model_in_production": in_production,
            "promoted": promote,
            "candidate_model": candidate,
            "previous_model": previous_id,
            "registered_model": version.name,
            "registry_version": version.version,
            "champion_alias": CHAMPION_ALIAS if promote else "unchanged",
            "rollback_to": previous_id,
            "experiment_id": experiment.experiment_id,
            "decision_reason": str(experiment.reason),
        }
    )
