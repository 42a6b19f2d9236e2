"""`fine_tuned_model`: the candidate, trained on this cycle's validated examples."""

import hashlib
import json
import time
from pathlib import Path

import dagster as dg

from finetune_assets.checks import FINE_TUNED_MODEL_CHECKS, fine_tune_results
from finetune_assets.finetuning import make_backend
from finetune_assets.finetuning.base import TERMINAL_STATUSES, FineTuningBackend, TrainingSpec
from finetune_assets.finetuning.dataset import parse_prompt
from finetune_assets.k8s import model_step_resources
from finetune_assets.observability import report_fine_tune
from finetune_assets.partitions import cycle_asset
from finetune_assets.progress import Say, format_duration, reporter
from finetune_assets.reporting import curve, image_markdown, loss_curves_plot
from finetune_assets.resources.config import PipelineConfigResource
from finetune_assets.resources.store import PlatformStore, StoreResource
from finetune_assets.resources.tracking import TrackingResource
from finetune_assets.settings import Settings

POLL_SECONDS = 15.0


def config_hash(settings: Settings) -> str:
    relevant = {
        "backend": settings.backend,
        "base_model": settings.base_model,
        **settings.training.model_dump(),
    }
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def ensure_base_model(settings: Settings, db: PlatformStore, log: dg.DagsterLogManager) -> str:
    """The demo base model is built once from the corpus (no model hub here); real checkpoints are used as is.

    Returns the base model's identity for the job key: a rebuilt demo model must never re-attach to a job
    trained on its predecessor.
    """
    if settings.backend != "local":
        return settings.base_model
    from finetune_assets.finetuning.demo_base_model import (
        DEMO_BASE_MODEL,
        MARKER_FILE,
        ensure_demo_base_model,
        format_chat_for_pretraining,
    )

    if settings.base_model != DEMO_BASE_MODEL:
        return settings.base_model
    posts = db.pretraining_posts(settings.min_impressions, settings.engagement_threshold)
    texts = []
    for raw_prompt, completion in posts:
        prompt = parse_prompt(raw_prompt)
        if isinstance(prompt, list) and completion.strip():
            texts.append(format_chat_for_pretraining([*prompt, {"role": "assistant", "content": completion}]))
    built = ensure_demo_base_model(
        texts,
        settings.resolved_state_dir() / "base_models" / DEMO_BASE_MODEL,
        seed=settings.training.seed,
        progress=reporter(log.info),
    )
    return f"{DEMO_BASE_MODEL}@{hashlib.sha256((built / MARKER_FILE).read_bytes()).hexdigest()[:16]}"


def wait_for(
    backend: FineTuningBackend, job_id: str, say: Say, deadline_s: float, poll_seconds: float = POLL_SECONDS
) -> None:
    """Poll a remote job until it ends, saying each time how long it has run and how long the deadline leaves."""
    started = time.monotonic()
    state = backend.poll(job_id)
    polls = 1
    while state.status not in TERMINAL_STATUSES:
        elapsed = time.monotonic() - started
        if elapsed > deadline_s:
            raise dg.Failure(f"fine-tuning job {job_id} still {state.status} after {deadline_s:.0f} s")
        time.sleep(poll_seconds)
        state = backend.poll(job_id)
        polls += 1
        elapsed = time.monotonic() - started
        say(
            f"job {job_id}: {state.status} after {format_duration(elapsed)} (poll {polls}, every "
            f"{format_duration(poll_seconds)}; gives up in {format_duration(deadline_s - elapsed)})"
        )


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
    train = db.load_examples(dataset["dataset_id"], "train")
    holdout = db.load_examples(dataset["dataset_id"], "holdout")
    validation = holdout[: settings.evaluation.max_holdout_examples]
    base_identity = ensure_base_model(settings, db, context.log)
    backend = make_backend(settings.backend, settings.resolved_state_dir())
    spec = TrainingSpec(
        job_key=hashlib.sha256(
            f"{dataset['dataset_hash']}:{config_hash(settings)}:{base_identity}".encode()
        ).hexdigest(),
        base_model=settings.base_model,
        train=train,
        validation=validation,
        hyperparameters=settings.training.model_dump(),
        suffix=f"cycle-{context.partition_key}",
        metadata={"partition": context.partition_key, "dataset_hash": dataset["dataset_hash"]},
    )
    with tracking.run(context, step="fine_tuned_model") as mlflow_run:
        say = reporter(context.log.info)
        state = backend.start(spec, progress=say)
        wait_for(backend, state.job_id, say, deadline_s=24 * 3600)
        result = backend.result(state.job_id)
        mlflow_run.log_params(
            {
                "backend": settings.backend,
                "base_model": settings.base_model,
                "partition": context.partition_key,
                "dataset_hash": dataset["dataset_hash"],
                "n_train": len(train),
                **{f"hp_{k}": v for k, v in spec.hyperparameters.items()},
            }
        )
        for step, loss in result.losses:
            mlflow_run.log_metric("train_loss", loss, step=step)
        for step, loss in result.validation_losses:
            mlflow_run.log_metric("validation_loss", loss, step=step)
        if result.artifact_uri and Path(result.artifact_uri).is_dir():
            mlflow_run.log_artifacts(result.artifact_uri, artifact_path="adapter")
        mlflow_run_id = mlflow_run.active_run().info.run_id
    model_id = result.model_id or f"failed:{result.job_id}"
    db.record_model(
        model_id=model_id,
        partition_key=context.partition_key,
        dataset_id=dataset["dataset_id"],
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
    final_loss = result.losses[-1][1] if result.losses else float("nan")
    return dg.MaterializeResult(
        metadata={
            "model_id": model_id,
            "job_id": result.job_id,
            "status": result.status,
            "backend": settings.backend,
            "base_model": settings.base_model,
            "dataset_id": dataset["dataset_id"],
            "dataset_hash": dataset["dataset_hash"],
            "n_train": len(train),
            "trained_tokens": result.trained_tokens,
            "final_train_loss": final_loss,
            "validation_loss": result.validation_losses[-1][1] if result.validation_losses else float("nan"),
            "loss_curve": dg.MetadataValue.md(curve(result.losses)),
            "loss_plot": dg.MetadataValue.md(
                image_markdown(loss_curves_plot(result.losses, result.validation_losses), "loss curves")
            ),
            "mlflow_run_id": mlflow_run_id,
        },
        check_results=fine_tune_results(result),
    )
