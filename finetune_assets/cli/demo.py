"""The embedded demo: a simulated world, one full cycle through the real assets, and a summary.

Everything user-facing is real (the store, the Dagster instance, the training, MLflow); only the people are
simulated: the historical posts and the A/B traffic come from `finetune_assets.simulation`, a demo stand-in
for real users. The 168-hour window is not slept through: the simulated audience writes the window's
traffic at once, and the decision run uses a clock pinned to the window's end.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, cast

import numpy as np

from finetune_assets.errors import FinetuneAssetsError
from finetune_assets.experiments.runtime.assignment import assign_variant
from finetune_assets.finetuning.base import FineTuningBackend
from finetune_assets.finetuning.demo_base_model import DEMO_BASE_MODEL
from finetune_assets.reporting.progress import Counter, to_terminal
from finetune_assets.resources.store import StoreResource
from finetune_assets.settings import Settings
from finetune_assets.simulation import (
    SIMULATION_LABEL,
    DemoWorldConfig,
    HiddenEngagementModel,
    generate_corpus,
    plan_traffic,
    score_traffic,
    world_users,
)
from finetune_assets.store.platform import PlatformStore
from finetune_assets.store.records import ExperimentRecord

Progress = Callable[[str], None]
GENERATION_BATCH = 64
QUIET_RUN_CONFIG = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
"""The demo prints its own progress (and the steps' progress lines, `finetune_assets.reporting.progress`); the
full event log stays in the instance (and the UI)."""
DEMO_SCALE_OVERRIDES = {"FINETUNE_EXPERIMENT__GUARDRAIL_MARGIN": "0.5"}
"""Environment overrides `finetune-assets demo` applies unless already set. The demo's A/B test has ~450
simulated users: far too few to show that impressions per user fell by less than the production margin (5 %),
so every guardrail would block promotion (the power gate says so at the start). The demo widens the margin to
50 % and says so; production keeps pipeline_config.yaml's value."""

DEMO_WORLD = DemoWorldConfig(seed=7, n_users=1000, n_posts=3000, history_days=21, bad_row_fraction=0.02)


class DemoError(FinetuneAssetsError, RuntimeError):
    """A demo step that cannot go on; the message says why and what to do."""


@dataclass(frozen=True)
class StepTiming:
    name: str
    seconds: float


def reset_state(state_dir: Path) -> None:
    """Forget the previous demo world (store, MLflow, trained adapters); keep the built demo base model."""
    for name in ("finetune.db", "finetune.db-wal", "finetune.db-shm", "mlflow.db", "mlartifacts", "jobs"):
        path = state_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def seed_world(store: PlatformStore, world: DemoWorldConfig, now: datetime, *, reset: bool) -> int:
    """Write the simulated historical posts. Refuses to mix two worlds in one table unless `reset`."""
    store.create_posts_table()
    existing = store.max_post_id()
    if existing and not reset:
        raise DemoError(
            f"{store.posts.name} already holds posts (max post_id {existing}); pass --reset to replace the demo world"
        )
    if existing:
        with store.engine.begin() as conn:
            conn.execute(store.posts.delete())
    return store.insert_posts(generate_corpus(world, now=now))


def simulate_ab_traffic(
    store: PlatformStore,
    backend: FineTuningBackend,
    settings: Settings,
    experiment: ExperimentRecord,
    world: DemoWorldConfig,
    progress: Progress,
) -> int:
    """The experiment window's posts: users assigned by the experiment's salt, each arm's model writes
    their posts, the simulated audience reacts. Returns the number of posts written."""
    users = world_users(world)
    rng = np.random.default_rng(world.seed + 1)

    def assign(user_id: str) -> str | None:
        return assign_variant(user_id, experiment.salt, split=experiment.split, coverage=experiment.coverage)

    hours = int((experiment.ends_at - experiment.started_at).total_seconds() // 3600)
    planned = plan_traffic(users, start=experiment.started_at, hours=hours, assign=assign, rng=rng)
    models = {"control": experiment.control_model, "treatment": experiment.treatment_model}
    completions: list[str] = [""] * len(planned)
    counter = Counter(len(planned))
    report_every = max(GENERATION_BATCH, len(planned) // 10)
    reported = 0
    for variant, model_id in models.items():
        model = backend.load(model_id)
        indices = [i for i, post in enumerate(planned) if post.variant == variant]
        for offset in range(0, len(indices), GENERATION_BATCH):
            batch = indices[offset : offset + GENERATION_BATCH]
            texts = model.generate(
                [planned[i].prompt_messages for i in batch],
                max_new_tokens=settings.evaluation.max_new_tokens,
                seed=offset,
            )
            for i, text in zip(batch, texts, strict=True):
                completions[i] = text
            line = counter.advance(len(batch), "posts written")
            if counter.done - reported >= report_every or counter.done == counter.total:
                reported = counter.done
                progress(f"    simulated traffic: {line}")
    rows = score_traffic(
        planned,
        completions,
        users_by_id={u.user_id: u for u in users},
        model_ids=models,
        experiment_id=experiment.experiment_id,
        hidden=HiddenEngagementModel(),
        rng=rng,
        first_post_id=store.max_post_id() + 1,
    )
    written = store.insert_posts(rows)
    store.annotate_experiment(experiment.experiment_id, traffic_source=SIMULATION_LABEL)
    return written


def _ends(points: list[Any]) -> list[Any]:
    return [points[0], points[-1]] if len(points) > 1 else list(points)


def _loss(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _signed(value: float | None) -> str:
    return "?" if value is None else f"{value:+.2%}"


def format_summary(store: PlatformStore, settings: Settings, partition: str, timings: list[StepTiming]) -> str:
    """What a newcomer wants to see after one cycle, read back from the store (the source of truth)."""
    dataset = store.latest_dataset(partition, statuses=("collected", "validated", "trained", "rejected"))
    model = store.latest_model(partition)
    evaluation = store.latest_evaluation(partition)
    experiment = store.latest_experiment(partition)
    lines = [f"finetune-assets demo — cycle {partition}  ({SIMULATION_LABEL})", ""]
    if dataset:
        rejected = dataset.details.rejected_by_reason
        lines += [
            f"Training data   {dataset.n_train} examples used, {dataset.n_holdout} held out for evaluation, "
            f"{dataset.n_rejected} rejected",
            "                rejected by reason: "
            + (", ".join(f"{k} {v}" for k, v in sorted(rejected.items())) or "none"),
            f"                dataset {dataset.dataset_id} ({dataset.status})",
        ]
    if model:
        metrics = model.details.metrics
        lines.append(
            f"Fine-tune       {model.model_id} ({model.status}); "
            + f"{metrics.get('steps', 0):.0f} steps in {metrics.get('train_seconds', 0):.1f} s; loss "
            + " → ".join(f"{loss:.3f}" for _, loss in _ends(list(model.details.losses)))
            + f"; validation loss {metrics.get('final_validation_loss', float('nan')):.3f}"
        )
    if evaluation:
        candidate, champion = evaluation.scores.candidate, evaluation.scores.champion
        lines.append(
            f"Evaluation      held-out loss candidate {_loss(candidate.heldout_loss)} vs champion "
            f"{_loss(champion.heldout_loss)}; predicted engagement candidate "
            f"{candidate.predicted_engagement:.2%} vs champion "
            f"{champion.predicted_engagement:.2%} ({'passed' if evaluation.passed else 'failed'})"
        )
    if experiment:
        result = experiment.details.decision
        lines.append(
            f"A/B test        {experiment.experiment_id}, {settings.a_b_test_duration_hours} h, salt "
            f"{experiment.salt}, split {experiment.split:.0%}"
        )
        for arm in ("control", "treatment"):
            rate = result.rate(arm) if result else None
            users = result.users.get(arm, 0) if result else 0
            lines.append(
                f"                {arm:<9} {experiment.model_of(arm)}: {users} users, engagement rate {rate:.3%}"
                if rate is not None
                else f"                {arm}: no traffic"
            )
        if result is not None and result.lift is not None:
            confidence = 1 - settings.experiment.alpha
            lines.append(
                f"                lift {result.lift:+.2%}, {confidence:.0%} CI [{_signed(result.ci_low)}, "
                f"{_signed(result.ci_high)}], p = {result.p_value:.4f}, SRM p = {result.srm_p_value:.3f}"
            )
        lines.append(f"Decision        {str(experiment.decision).upper()}: {experiment.reason}")
    lines.append(f"In production   {store.production_model(default=settings.base_model)}")
    lines.append("")
    lines.append("Timings         " + ", ".join(f"{t.name} {t.seconds:.1f} s" for t in timings))
    return "\n".join(lines)


def _failure_message(result: Any) -> str:
    for event in result.all_events:
        if event.event_type_value == "STEP_FAILURE":
            error = event.event_specific_data.error
            while (
                error is not None and error.cause is not None and "DagsterExecutionStepExecutionError" in error.cls_name
            ):
                error = error.cause
            return f"step {event.step_key} failed: {error.message.strip() if error else event.message}"
    return "the run failed"


def demo_store(resource: StoreResource, progress: Progress) -> PlatformStore:
    """The store the demo's runs use. The definitions' resource holds `DATABASE_URL` as an `EnvVar`, whose
    value (not its name) `StoreResource.url` reads; unset, the state directory's SQLite file."""
    from finetune_assets.service_urls import env_value, mask

    store = resource.get()
    if env_value(resource.database_url):
        foreign = foreign_posts(store)
        if foreign:
            raise DemoError(
                f"DATABASE_URL={mask(resource.url())}: its {store.posts.name} table holds {foreign} posts that are "
                "not the demo's simulated world, and the demo replaces that table; point DATABASE_URL at a database "
                "of its own (or unset it for the SQLite file under the state directory)"
            )
        progress(f"store: DATABASE_URL={mask(resource.url())} (its {store.posts.name} table gets the demo world)")
    return store


def foreign_posts(store: PlatformStore) -> int:
    """Posts no demo wrote: the demo's rows all name its base model (`base:`, `ft:` or plain) in `model_id`."""
    import sqlalchemy as sa

    if not store.has_posts_table():
        return 0
    posts = store.posts
    query = sa.select(sa.func.count()).where(
        sa.or_(posts.c.model_id.is_(None), ~posts.c.model_id.contains(DEMO_BASE_MODEL))
    )
    with store.engine.connect() as conn:
        return int(conn.execute(query).scalar() or 0)


def run_demo(settings: Settings, *, progress: Progress) -> int:
    """Seed, train-to-experiment run, simulated window, sensor tick, decide-and-promote run, summary."""
    import logging
    import warnings

    import dagster as dg

    warnings.filterwarnings("ignore", category=dg.BetaWarning)
    warnings.filterwarnings("ignore", category=dg.PreviewWarning)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)

    from finetune_assets.definitions import defs
    from finetune_assets.finetuning import make_backend
    from finetune_assets.partitions import current_cycle, weekly_cycle_partitions
    from finetune_assets.resources.clock import ClockResource
    from finetune_assets.sensors import ab_test_sensor

    timings: list[StepTiming] = []
    state_dir = settings.resolved_state_dir()
    state_dir.mkdir(parents=True, exist_ok=True)
    reset_state(state_dir)
    store = demo_store(cast(StoreResource, (defs.resources or {})["store"]), progress)
    now = datetime.now(tz=None).astimezone()
    started = time.monotonic()
    written = seed_world(store, DEMO_WORLD, now, reset=True)
    timings.append(StepTiming("seed", time.monotonic() - started))
    progress(f"1/4 seeded {written} posts of {DEMO_WORLD.n_users} users ({SIMULATION_LABEL})")

    partition = current_cycle(weekly_cycle_partitions, now)
    if partition is None:
        raise DemoError("no weekly partition exists yet: partitions_start_date lies in the future")
    instance = dg.DagsterInstance.get()
    progress(f"2/4 cycle {partition}: training_data → fine_tuned_model → evaluation_scores → ab_test")
    started = time.monotonic()
    with to_terminal():  # training, evaluation and base-model progress lines; the rest of the log stays quiet
        result = defs.resolve_job_def("finetune_cycle_job").execute_in_process(
            instance=instance, partition_key=partition, raise_on_error=False, run_config=QUIET_RUN_CONFIG
        )
    timings.append(StepTiming("train+evaluate", time.monotonic() - started))
    if not result.success:
        progress(format_summary(store, settings, partition, timings))
        raise DemoError(f"cycle {partition}: {_failure_message(result)}")

    experiment = store.running_experiment()
    if experiment is None:
        raise DemoError("the cycle finished but no experiment is running")
    progress(f"3/4 {settings.a_b_test_duration_hours} h of A/B traffic from the {SIMULATION_LABEL}")
    started = time.monotonic()
    backend = make_backend(settings.backend, state_dir)
    posts = simulate_ab_traffic(store, backend, settings, experiment, DEMO_WORLD, progress)
    timings.append(StepTiming("A/B traffic", time.monotonic() - started))
    progress(f"    {posts} posts written in experiment {experiment.experiment_id}")

    window_end = ClockResource(fixed_now=experiment.ends_at.isoformat())
    resources = {**(defs.resources or {}), "clock": window_end}
    context = dg.build_sensor_context(instance=instance, definitions=defs, resources=resources)
    tick = ab_test_sensor(context)
    if not isinstance(tick, dg.RunRequest):
        raise DemoError(f"ab_test_sensor did not fire at the window's end: {tick}")
    progress(f"4/4 ab_test_sensor fired (run key {tick.run_key}): ab_test_outcome → production_model")
    started = time.monotonic()
    decision = defs.resolve_job_def("ab_test_decision_job").execute_in_process(
        instance=instance,
        partition_key=partition,
        raise_on_error=False,
        run_config=QUIET_RUN_CONFIG,
        resources={"clock": window_end},
        tags={**tick.tags, "dagster/sensor_name": "ab_test_sensor"},
    )
    timings.append(StepTiming("decide+promote", time.monotonic() - started))
    progress("")
    progress(format_summary(store, settings, partition, timings))
    if not decision.success:
        raise DemoError(f"decision run: {_failure_message(decision)}")
    return 0
