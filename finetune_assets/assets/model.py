"""`fine_tuned_model`: the candidate, trained on this cycle's validated examples."""

import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any

import dagster as dg

from finetune_assets.checks import FINE_TUNED_MODEL_CHECKS, fine_tune_results
from finetune_assets.deployment.k8s import model_step_resources
from finetune_assets.finetuning.base import TERMINAL_STATUSES, FineTuningBackend, TrainingSpec
from finetune_assets.finetuning.dataset import parse_prompt
from finetune_assets.partitions import cycle_asset
from finetune_assets.reporting.metadata import curve, image_markdown, loss_curves_plot
from finetune_assets.reporting.metrics import report_fine_tune
from finetune_assets.reporting.progress import Say, format_duration, reporter
from finetune_assets.resources.config import PipelineConfigResource
from finetune_assets.resources.openai import OpenAIResource, backend_failure
from finetune_assets.resources.store import StoreResource
from finetune_assets.resources.tracking import TrackingResource
from finetune_assets.settings import Settings
from finetune_assets.store.platform import PlatformStore

POLL_SECONDS = 15.0


def config_hash(settings: Settings) -> str:
    relevant = {
        "backend": settings.backend,
        "base_model": settings.base_model,
        **settings.training.model_dump(),
    }
    if settings.backend == "openai":  # only then: local job keys stay what they were
        relevant["openai_hyperparameters"] = settings.openai.hyperparameters.model_dump()
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
    backend: FineTuningBackend,
    job_id: str,
    say: Say,
    deadline_s: float,
    poll_seconds: float = POLL_SECONDS,
    backoff: float = 1.0,
    max_poll_seconds: float | None = None,
) -> None:
    """Poll a remote job until it ends, saying each time how long it has run and how long the deadline leaves.

    Each wait is `backoff` times the last, up to `max_poll_seconds`. At the deadline the job is left running:
    a rerun re-attaches to it.
    """
    started = time.monotonic()
    state = backend.poll(job_id)
    polls = 1
    while state.status not in TERMINAL_STATUSES:
        elapsed = time.monotonic() - started
        if elapsed > deadline_s:
            raise dg.Failure(
                f"fine-tuning job {job_id} still {state.status} after {deadline_s:.0f} s; it keeps running at the "
                "provider, and materializing fine_tuned_model again re-attaches to it"
            )
        time.sleep(poll_seconds)
        state = backend.poll(job_id)
        polls += 1
        elapsed = time.monotonic() - started
        say(
            f"job {job_id}: {state.status} after {format_duration(elapsed)} (poll {polls}, every "
            f"{format_duration(poll_seconds)}; gives up in {format_duration(deadline_s - elapsed)})"
        )
        poll_seconds = min(poll_seconds * backoff, max_poll_seconds or math.inf)


def log_curves(
    run_id: str, losses: list[tuple[int, float]], validation_losses: list[tuple[int, float]], chunk: int = 1000
) -> None:
    """`train_loss` and `validation_loss` per step into the active MLflow run, batched (MLflow's limit: 1000)."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [Metric("train_loss", v, now, s) for s, v in losses]
    metrics += [Metric("validation_loss", v, now, s) for s, v in validation_losses]
    client = MlflowClient()
    for first in range(0, len(metrics), chunk):
        client.log_batch(run_id, metrics=metrics[first : first + chunk])


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
    base_identity = ensure_base_model(settings, db, context.log)
    backend = openai.backend(settings, db)
    remote = settings.backend == "openai"
    spec = TrainingSpec(
        job_key=hashlib.sha256(
            f"{dataset.dataset_hash}:{config_hash(settings)}:{base_identity}".encode()
        ).hexdigest(),
        base_model=settings.base_model,
        train=train,
        validation=validation,
        hyperparameters=settings.openai.hyperparameters.model_dump() if remote else settings.training.model_dump(),
        suffix=f"cycle-{context.partition_key}",
        metadata={
            "partition": context.partition_key,
            "dataset_hash": dataset.dataset_hash,
            "config_hash": config_hash(settings),
        },
    )
    with tracking.run(context, step="fine_tuned_model") as mlflow_run:
        say = reporter(context.log.info)
        try:
            state = backend.start(spec, progress=say)
            if remote:
                wait_for(
                    backend,
                    state.job_id,
                    say,
                    deadline_s=settings.openai.job_deadline_hours * 3600,
                    poll_seconds=settings.openai.poll_interval_seconds,
                    backoff=settings.openai.poll_backoff,
                    max_poll_seconds=settings.openai.max_poll_interval_seconds,
                )
            else:
                wait_for(backend, state.job_id, say, deadline_s=24 * 3600)
            result = backend.result(state.job_id)
        except Exception as exc:
            failure = backend_failure(backend, exc)
            if failure is None:
                raise
            raise failure from None
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
        if remote:  # a remote job reports a loss for every step (thousands): one batched call per 1000
            log_curves(mlflow_run.active_run().info.run_id, result.losses, result.validation_losses)
        else:
            for step, loss in result.losses:
                mlflow_run.log_metric("train_loss", loss, step=step)
            for step, loss in result.validation_losses:
                mlflow_run.log_metric("validation_loss", loss, step=step)
        if result.artifact_uri and Path(result.artifact_uri).is_dir():
            mlflow_run.log_artifacts(result.artifact_uri, artifact_path="adapter")
        if remote:  # trained tokens, cost, final accuracies from the results CSV
            mlflow_run.log_metrics({k: v for k, v in result.metrics.items() if math.isfinite(v)})
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
    if remote and result.status != "succeeded":  # OpenAI's code, message and param; nothing downstream runs
        raise dg.Failure(
            description=f"fine-tuning job {result.job_id} {result.status}: {result.error}",
            metadata={"job_id": result.job_id, "status": result.status, "error": result.error or ""},
        )
    remote_metadata: dict[str, Any] = (
        {
            "cost_usd": result.metrics.get("cost_usd", float("nan")),
            "openai_metrics": dg.MetadataValue.json(result.metrics),
            "hyperparameters": dg.MetadataValue.json(spec.hyperparameters),
        }
        if remote
        else {}
    )
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
            **remote_metadata,
        },
        check_results=fine_tune_results(result),
    )
