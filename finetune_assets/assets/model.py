"""`fine_tuned_model`: the candidate, trained on this cycle's validated examples."""

import hashlib
import json

import dagster as dg

from finetune_assets.checks import FINE_TUNED_MODEL_CHECKS, fine_tune_results
from finetune_assets.deployment.k8s import model_step_resources
from finetune_assets.finetuning.base import TrainingSpec
from finetune_assets.finetuning.runner import base_model_identity, runner_for
from finetune_assets.partitions import cycle_asset
from finetune_assets.reporting.metadata import curve, image_markdown, loss_curves_plot
from finetune_assets.reporting.metrics import report_fine_tune
from finetune_assets.reporting.progress import reporter
from finetune_assets.resources.config import PipelineConfigResource
from finetune_assets.resources.openai import OpenAIResource
from finetune_assets.resources.store import StoreResource
from finetune_assets.resources.tracking import TrackingResource
from finetune_assets.settings import Settings


def config_hash(settings: Settings) -> str:
    relevant = {
        "backend": settings.backend,
        "base_model": settings.base_model,
        **settings.training.model_dump(),
    }
    if settings.backend == "openai":  # only then: local job keys stay what they were
        relevant["openai_hyperparameters"] = settings.openai.hyperparameters.model_dump()
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


@cycle_asset(
    deps=["training_data"],
    check_specs=FINE_TUNED_MODEL_CHECKS,
    kinds={"pytorch"},
    op_tags=model_step_resources(),
)
def fine_tuned_model(
    context: dg.AssetExecutionContext,
    pipeline: PipelineConfigResource,
    store: StoreResource,
    tracking: TrackingResource,
    openai: OpenAIResource,
) -> dg.MaterializeResult:
    """Fine-tune the candidate. A retried run re-attaches to the job it started (same dataset + config)."""
    settings = pipeline.get()
    db = store.get()
    dataset = db.latest_dataset(context.partition_key, statuses=("validated", "trained"))
    if dataset is None:
        raise dg.Failure(
            f"no validated training data for cycle {context.partition_key}: materialize training_data first "
            "(its blocking checks must pass)"
        )
    train = db.load_examples(dataset.dataset_id, "train")
    holdout = db.load_examples(dataset.dataset_id, "holdout")
    validation = holdout[: settings.evaluation.max_holdout_examples]
    say = reporter(context.log.info)
    base_identity = base_model_identity(
        settings,
        lambda: db.pretraining_posts(settings.min_impressions, settings.engagement_threshold),
        say,
    )
    runner = runner_for(settings, db, lambda: openai.client(settings.openai))
    spec = TrainingSpec(
        job_key=hashlib.sha256(f"{dataset.dataset_hash}:{config_hash(settings)}:{base_identity}".encode()).hexdigest(),
        base_model=settings.base_model,
        train=train,
        validation=validation,
        hyperparameters=runner.hyperparameters,
        suffix=f"cycle-{context.partition_key}",
        metadata={
            "partition": context.partition_key,
            "dataset_hash": dataset.dataset_hash,
            "config_hash": config_hash(settings),
        },
    )
    with tracking.run(context, step="fine_tuned_model") as mlflow_run:
        result = runner.run(spec, say)
        mlflow_run.log_params(
            {
                "backend": settings.backend,
                "base_model": settings.base_model,
                "partition": context.partition_key,
                "dataset_hash": dataset.dataset_hash,
                "n_train": len(train),
                **{f"hp_{k}": v for k, v in spec.hyperparameters.items()},
            }
        )
        runner.log_result(mlflow_run, result)
        mlflow_run_id = mlflow_run.active_run().info.run_id
    model_id = result.model_id or f"failed:{result.job_id}"
    db.record_model(
        model_id=model_id,
        partition_key=context.partition_key,
        dataset_id=dataset.dataset_id,
        backend=settings.backend,
        base_model=settings.base_model,
        job_id=result.job_id,
        status=result.status,
        details={
            "metrics": result.metrics,
            "losses": result.losses,
            "trained_tokens": result.trained_tokens,
            "artifact_uri": result.artifact_uri,
            "mlflow_run_id": mlflow_run_id,
            "error": result.error,
        },
    )
    report_fine_tune(
        status=result.status,
        trained_tokens=result.trained_tokens,
        cost_usd=result.metrics.get("cost_usd", 0.0),
        warn=context.log.warning,
    )
    runner.raise_if_failed(result)
    final_loss = result.losses[-1][1] if result.losses else float("nan")
    return dg.MaterializeResult(
        metadata={
            "model_id": model_id,
            "job_id": result.job_id,
            "status": result.status,
            "backend": settings.backend,
            "base_model": settings.base_model,
            "dataset_id": dataset.dataset_id,
            "dataset_hash": dataset.dataset_hash,
            "n_train": len(train),
            "trained_tokens": result.trained_tokens,
            "final_train_loss": final_loss,
            "validation_loss": result.validation_losses[-1][1] if result.validation_losses else float("nan"),
            "loss_curve": dg.MetadataValue.md(curve(result.losses)),
            "loss_plot": dg.MetadataValue.md(
                image_markdown(loss_curves_plot(result.losses, result.validation_losses), "loss curves")
            ),
            "mlflow_run_id": mlflow_run_id,
            **runner.metadata(result),
        },
        check_results=fine_tune_results(result),
    )
