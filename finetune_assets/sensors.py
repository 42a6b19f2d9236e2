"""Sensors: start a cycle early when enough examples wait, watch a running A/B test (the hourly harm/SRM monitor,
then the decision when its window closes or the monitor stops it), and report failed runs. Ticks only run SQL
aggregates (the monitor's per-user sums are one GROUP BY); the work happens in the runs they launch."""

import json
import os
import urllib.request
from dataclasses import dataclass

import dagster as dg

from finetune_assets.experiments.runtime.lifecycle import early_stop, watch_experiment
from finetune_assets.jobs import ab_test_decision_job, finetune_cycle_job
from finetune_assets.partitions import current_cycle, weekly_cycle_partitions
from finetune_assets.reporting.metrics import report_monitor, report_qualifying, report_run_failure, report_run_request
from finetune_assets.resources.clock import ClockResource
from finetune_assets.resources.config import PipelineConfigResource
from finetune_assets.resources.store import StoreResource

ALERT_WEBHOOK_ENV = "FINETUNE_ALERT_WEBHOOK_URL"
EXPERIMENT_TAG = "finetune_assets/experiment_id"
STEP_TAG = "finetune_assets/decision_step"
"""`decide` (ab_test_outcome, then production_model) or `promote` (production_model alone, to finish a promotion)."""
MAX_DECISION_ATTEMPTS = 5
"""Decision runs per experiment before the sensor stops retrying and asks for a person."""


@dg.sensor(job=finetune_cycle_job, minimum_interval_seconds=300, default_status=dg.DefaultSensorStatus.STOPPED)
def training_data_sensor(
    context: dg.SensorEvaluationContext,
    pipeline: PipelineConfigResource,
    store: StoreResource,
    clock: ClockResource,
) -> dg.SensorResult | dg.SkipReason:
    """Enough qualifying posts no cycle has used → rematerialize the newest cycle, once per set of posts.

    The cursor and the run key are the newest qualifying post id: the same posts never launch two runs.
    """
    settings = pipeline.get()
    db = store.get()
    waiting, newest = db.count_qualifying(settings.min_impressions, settings.engagement_threshold)
    report_qualifying(waiting, warn=context.log.warning)
    running = db.running_experiment()
    if running is not None:
        return dg.SkipReason(
            f"{waiting} qualifying examples wait, but experiment {running.experiment_id} runs until "
            f"{running.ends_at:%Y-%m-%d %H:%M} UTC: only one experiment runs at a time, so training waits"
        )
    if waiting < settings.training_data_threshold:
        return dg.SkipReason(
            f"{waiting} qualifying examples not yet used for training; training_data_threshold is "
            f"{settings.training_data_threshold}"
        )
    if context.cursor and newest is not None and int(context.cursor) >= newest:
        return dg.SkipReason(f"a run was already requested for the posts up to #{newest}")
    partition = current_cycle(weekly_cycle_partitions, clock.now())
    if partition is None:
        return dg.SkipReason("no training cycle has started yet (before partitions_start_date)")
    report_run_request("training_data_sensor", warn=context.log.warning)
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(
                run_key=f"posts-upto-{newest}",
                partition_key=partition,
                tags={
                    "finetune_assets/trigger": "training_data_sensor",
                    "finetune_assets/waiting": str(waiting),
                },
            )
        ],
        cursor=str(newest),
    )


@dataclass(frozen=True)
class DecisionRuns:
    """The decision runs launched for one experiment so far (newest first), read from the Dagster instance."""

    runs: list[dg.DagsterRun]

    @classmethod
    def of(cls, instance: dg.DagsterInstance, experiment_id: str) -> "DecisionRuns":
        filters = dg.RunsFilter(job_name=ab_test_decision_job.name, tags={EXPERIMENT_TAG: experiment_id})
        return cls(list(instance.get_runs(filters=filters)))

    @property
    def in_flight(self) -> dg.DagsterRun | None:
        return next((run for run in self.runs if not run.is_finished), None)

    @property
    def last_failed(self) -> dg.DagsterRun | None:
        return self.runs[0] if self.runs and self.runs[0].status == dg.DagsterRunStatus.FAILURE else None

    @property
    def next_attempt(self) -> int:
        return len(self.runs) + 1


def decision_run(
    context: dg.SensorEvaluationContext, experiment_id: str, partition_key: str, *, step: str, tags: dict[str, str]
) -> dg.RunRequest | dg.SkipReason:
    """The decision run for an experiment, exactly once at a time: none while one is in flight; after a failed
    one, a new attempt under a new run key (the daemon never launches a run key twice), since every effect of the
    decision and the promotion is idempotent; after `MAX_DECISION_ATTEMPTS`, a person is asked to look."""
    runs = DecisionRuns.of(context.instance, experiment_id)
    if runs.in_flight is not None:
        return dg.SkipReason(
            f"decision run {runs.in_flight.run_id} of experiment {experiment_id} is "
            f"{runs.in_flight.status.value.lower()}; waiting for it"
        )
    failed = runs.last_failed
    attempt = runs.next_attempt
    if failed is not None and attempt > MAX_DECISION_ATTEMPTS:
        message = (
            f"the decision of experiment {experiment_id} failed {len(runs.runs)} times (last: run {failed.run_id}); "
            f"ab_test_sensor stops retrying: read that run's error, fix its cause, then launch "
            f"{ab_test_decision_job.name} for partition {partition_key}"
        )
        context.log.error(message)
        return dg.SkipReason(message)
    if failed is not None:
        context.log.warning(
            f"decision run {failed.run_id} of experiment {experiment_id} failed; retrying it as attempt {attempt} "
            f"of {MAX_DECISION_ATTEMPTS} (every step of the decision and the promotion is idempotent)"
        )
    report_run_request("ab_test_sensor", warn=context.log.warning)
    return dg.RunRequest(
        run_key=experiment_id if attempt == 1 else f"{experiment_id}:attempt-{attempt}",
        job_name=ab_test_decision_job.name,
        partition_key=partition_key,
        asset_selection=[dg.AssetKey("production_model")] if step == "promote" else None,
        tags={EXPERIMENT_TAG: experiment_id, STEP_TAG: step, **tags},
    )


@dg.sensor(
    jobs=[ab_test_decision_job, finetune_cycle_job],
    minimum_interval_seconds=300,
    default_status=dg.DefaultSensorStatus.STOPPED,
)
def ab_test_sensor(
    context: dg.SensorEvaluationContext, pipeline: PipelineConfigResource, store: StoreResource, clock: ClockResource
) -> dg.RunRequest | dg.SkipReason:
    """Watch the running experiment: the harm/SRM monitor every `monitor_interval_minutes`, and the decision
    run when the window closes or the monitor stops it — one at a time, retried under a new run key when it
    failed (`decision_run`).

    First, a decided experiment whose promotion was never recorded (its run stopped between the decision and
    the routing write) gets `production_model` run again, so MLflow and the routing end up agreeing. With no
    experiment running, a candidate that passed evaluation while another experiment ran (its `ab_test` step
    failed and said it waits) gets its experiment started, once per evaluation.
    """
    settings = pipeline.get()
    db = store.get()
    experiment = db.running_experiment()
    unfinished = db.decided_without_promotion()
    if unfinished:
        half_done = unfinished[-1]
        context.log.warning(
            f"experiment {half_done.experiment_id} was decided ({half_done.decision}) but its promotion was never "
            "recorded: running production_model again to finish it"
        )
        request = decision_run(context, half_done.experiment_id, half_done.partition_key, step="promote", tags={})
        if isinstance(request, dg.RunRequest) or experiment is None:
            return request
    if experiment is None:
        waiting = db.waiting_candidate()
        if waiting is None:
            return dg.SkipReason("no experiment is running and no evaluated candidate waits for one")
        report_run_request("ab_test_sensor", warn=context.log.warning)
        return dg.RunRequest(
            run_key=f"start-{waiting.evaluation_id}",
            job_name=finetune_cycle_job.name,
            partition_key=waiting.partition_key,
            asset_selection=[dg.AssetKey("ab_test")],
            tags={"finetune_assets/waiting_candidate": waiting.candidate_model},
        )
    watch = watch_experiment(db, experiment, settings, clock.now())
    if watch.look is not None:
        report_monitor(watch.look.action, warn=context.log.warning)
    if not watch.decide:
        return dg.SkipReason(watch.reason)
    tags: dict[str, str] = {}
    stop = early_stop(db.get_experiment(experiment.experiment_id) or experiment)
    if stop is not None:
        context.log.warning(watch.reason)
        tags["finetune_assets/early_stop"] = stop.action
    return decision_run(context, experiment.experiment_id, experiment.partition_key, step="decide", tags=tags)


def post_alert(url: str, payload: dict[str, str]) -> None:
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=5):
        pass


@dg.run_failure_sensor(
    name="finetune_run_failure_sensor",
    monitored_jobs=[finetune_cycle_job, ab_test_decision_job],
    default_status=dg.DefaultSensorStatus.STOPPED,
)
def finetune_run_failure_sensor(context: dg.RunFailureSensorContext) -> None:
    """Log every failed cycle run; also POST it to `FINETUNE_ALERT_WEBHOOK_URL` when that is set."""
    run = context.dagster_run
    message = context.failure_event.message or "run failed"
    summary = {
        "run_id": run.run_id,
        "job": run.job_name,
        "partition": run.tags.get("dagster/partition", ""),
        "message": message,
    }
    context.log.error(f"finetune run failed: {summary}")
    report_run_failure(run.job_name, warn=context.log.warning)
    url = os.environ.get(ALERT_WEBHOOK_ENV)
    if url:
        try:
            post_alert(url, summary)
        except OSError as exc:
            context.log.warning(f"alert webhook unreachable: {exc}")
