"""Sensors: start a cycle early when enough examples wait, watch a running A/B test (the hourly harm/SRM monitor,
then the decision when its window closes or the monitor stops it), and report failed runs. Ticks only run SQL
aggregates (the monitor's per-user sums are one GROUP BY); the work happens in the runs they launch."""

import json
import os
import urllib.request

import dagster as dg

from finetune_assets.experiments.runtime.lifecycle import early_stop, watch_experiment
from finetune_assets.jobs import ab_test_decision_job, finetune_cycle_job
from finetune_assets.partitions import current_cycle, weekly_cycle_partitions
from finetune_assets.reporting.metrics import report_monitor, report_qualifying, report_run_failure, report_run_request
from finetune_assets.resources.clock import ClockResource
from finetune_assets.resources.config import PipelineConfigResource
from finetune_assets.resources.store import StoreResource

ALERT_WEBHOOK_ENV = "FINETUNE_ALERT_WEBHOOK_URL"


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


@dg.sensor(
    jobs=[ab_test_decision_job, finetune_cycle_job],
    minimum_interval_seconds=300,
    default_status=dg.DefaultSensorStatus.STOPPED,
)
def ab_test_sensor(
    context: dg.SensorEvaluationContext, pipeline: PipelineConfigResource, store: StoreResource, clock: ClockResource
) -> dg.RunRequest | dg.SkipReason:
    """Watch the running experiment: the harm/SRM monitor every `monitor_interval_minutes`, and the decision
    run — exactly once per experiment (its id is the run key) — when the window closes or the monitor stops it.

    With no experiment running, a candidate that passed evaluation while another experiment ran (its
    `ab_test` step failed and said it waits) gets its experiment started, once per evaluation.
    """
    settings = pipeline.get()
    db = store.get()
    experiment = db.running_experiment()
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
    report_run_request("ab_test_sensor", warn=context.log.warning)
    tags = {"finetune_assets/experiment_id": experiment.experiment_id}
    stop = early_stop(db.get_experiment(experiment.experiment_id) or experiment)
    if stop is not None:
        context.log.warning(watch.reason)
        tags["finetune_assets/early_stop"] = stop.action
    return dg.RunRequest(
        run_key=experiment.experiment_id,
        job_name=ab_test_decision_job.name,
        partition_key=experiment.partition_key,
        tags=tags,
    )


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
