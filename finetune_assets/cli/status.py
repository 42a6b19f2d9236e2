"""`finetune-assets status`: what is going on right now.

Runs in progress and the schedule's and sensors' on/off state come from the Dagster instance; the running
experiment, the last training and the examples that wait come from the SQL store (O(1) aggregates, the same
queries the sensors run); the next tick from the schedule's cron and timezone.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from finetune_assets.reporting.formatting import iso_seconds, zoned_minute
from finetune_assets.reporting.progress import format_duration

if TYPE_CHECKING:
    import dagster as dg

    from finetune_assets.settings import Settings
    from finetune_assets.store.platform import PlatformStore

SENSORS = ("training_data_sensor", "ab_test_sensor", "finetune_run_failure_sensor")
ACTIVE_RUN_STATUSES = ("QUEUED", "NOT_STARTED", "STARTING", "STARTED", "CANCELING")


def _instigator_states(instance: dg.DagsterInstance) -> dict[str, str]:
    """Name → RUNNING | STOPPED for the schedules and sensors someone switched in this instance."""
    states = {}
    for state in instance.all_instigator_state():
        status = state.status.value
        states[state.name] = "RUNNING" if status in ("RUNNING", "DECLARED_IN_CODE") else "STOPPED"
    return states


def gather_status(
    *, settings: Settings, store: PlatformStore, instance: dg.DagsterInstance, now: datetime, instance_location: str
) -> dict[str, Any]:
    import dagster as dg
    from dagster._utils.schedules import get_next_cron_tick  # the cron iterator the daemon itself uses

    from finetune_assets.definitions import defs
    from finetune_assets.partitions import current_cycle, weekly_cycle_partitions

    switched = _instigator_states(instance)

    def state(name: str, default: dg.DefaultSensorStatus | dg.DefaultScheduleStatus) -> str:
        return switched.get(name, "RUNNING" if default.value == "RUNNING" else "STOPPED")

    active = instance.get_runs(
        filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus[s] for s in ACTIVE_RUN_STATUSES]), limit=20
    )
    running = []
    for run in active:
        record = instance.get_run_record_by_id(run.run_id)
        started = record.start_time if record is not None else None
        running.append(
            {
                "run_id": run.run_id,
                "job": run.job_name,
                "status": run.status.value,
                "partition": run.tags.get("dagster/partition"),
                "started_at": iso_seconds(datetime.fromtimestamp(started, UTC)) if started else None,
                "running_for_s": (now.timestamp() - started) if started else None,
            }
        )

    experiment = store.running_experiment()
    active_experiment = None
    if experiment is not None:
        left_s = (experiment.ends_at - now).total_seconds()
        details = experiment.details
        active_experiment = {
            "experiment_id": experiment.experiment_id,
            "partition": experiment.partition_key,
            "treatment_model": experiment.treatment_model,
            "control_model": experiment.control_model,
            "started_at": iso_seconds(experiment.started_at),
            "ends_at": iso_seconds(experiment.ends_at),
            "hours_left": max(left_s, 0.0) / 3600,
            "window_closed": left_s <= 0,
            "coverage": experiment.coverage,
            "powered": details.power_gate.ok if details.power_gate is not None else None,
            "monitor": details.monitor.reason if details.monitor is not None else None,
            "monitor_looks": details.monitor_looks,
        }
    last_experiment = store.latest_experiment()

    last_models = store.recent_models(1)
    last_training = None
    if last_models:
        model = last_models[0]
        last_training = {
            "model_id": model.model_id,
            "partition": model.partition_key,
            "status": model.status,
            "at": iso_seconds(model.created_at),
            "dataset_id": model.dataset_id,
        }
    cycle_runs = instance.get_runs(filters=dg.RunsFilter(job_name="finetune_cycle_job"), limit=1)
    last_cycle_run = None
    if cycle_runs:
        run = cycle_runs[0]
        last_cycle_run = {
            "run_id": run.run_id,
            "status": run.status.value,
            "partition": run.tags.get("dagster/partition"),
        }

    posts_table = store.has_posts_table()
    waiting = store.count_qualifying(settings.min_impressions, settings.engagement_threshold)[0] if posts_table else 0
    candidate = store.waiting_candidate()

    schedule = defs.resolve_schedule_def("weekly_finetune_schedule")
    tick = get_next_cron_tick(str(schedule.cron_schedule), now, schedule.execution_timezone or "UTC")
    return {
        "now": iso_seconds(now),
        "dagster_instance": instance_location,
        "runs_in_progress": running,
        "active_experiment": active_experiment,
        "last_experiment": None
        if last_experiment is None
        else {
            "experiment_id": last_experiment.experiment_id,
            "status": last_experiment.status,
            "decision": last_experiment.decision,
            "decided_at": iso_seconds(last_experiment.decided_at),
        },
        "last_training": last_training,
        "last_cycle_run": last_cycle_run,
        "waiting_examples": {
            "posts_table": settings.posts_table if posts_table else None,
            "qualifying_unused_posts": waiting,
            "training_data_threshold": settings.training_data_threshold,
            "engagement_threshold": settings.engagement_threshold,
            "min_impressions": settings.min_impressions,
            "enough_for_a_cycle": waiting >= settings.training_data_threshold,
        },
        "waiting_candidate": None
        if candidate is None
        else {"model_id": candidate.candidate_model, "partition": candidate.partition_key},
        "model_in_production": store.production_model(default=settings.base_model),
        "next_schedule_tick": {
            "schedule": schedule.name,
            "at": iso_seconds(tick),
            "in_s": (tick - now).total_seconds(),
            "fills_partition": current_cycle(weekly_cycle_partitions, tick),
            "state": state(schedule.name, schedule.default_status),
        },
        "sensors": {
            sensor.name: state(sensor.name, sensor.default_status)
            for sensor in (defs.resolve_sensor_def(name) for name in SENSORS)
        },
    }


def format_status(status: Mapping[str, Any]) -> str:
    width = 20
    lines = [f"finetune-assets status — {zoned_minute(status['now'])}", ""]

    def row(label: str, *texts: str) -> None:
        lines.append(f"{label:<{width}}{texts[0]}")
        lines.extend(f"{'':<{width}}{text}" for text in texts[1:])

    runs = status["runs_in_progress"]
    if runs:
        row(
            "Running now",
            *(
                f"{r['job']} run {r['run_id'].split('-')[0]} ({r['status']}"
                + (f", partition {r['partition']}" if r["partition"] else "")
                + (f", for {format_duration(r['running_for_s'])}" if r["running_for_s"] is not None else "")
                + ")"
                for r in runs
            ),
        )
    else:
        row("Running now", "no run in progress")

    experiment = status["active_experiment"]
    if experiment is not None:
        if experiment["window_closed"]:
            left = "window closed: ab_test_sensor decides it on its next tick"
        else:
            left = f"{experiment['hours_left']:.1f} h left (ends {zoned_minute(experiment['ends_at'])})"
        row(
            "Experiment",
            f"{experiment['experiment_id']} running, {left}",
            f"candidate {experiment['treatment_model']} vs {experiment['control_model']}, "
            f"{experiment['coverage']:.0%} of users enrolled"
            + ("; under-powered (see ab_test's power_gate)" if experiment["powered"] is False else ""),
            f"monitor ({experiment['monitor_looks']} looks): {experiment['monitor'] or 'no look yet'}",
        )
    else:
        last = status["last_experiment"]
        row(
            "Experiment",
            "none running"
            + (
                f"; the last, {last['experiment_id']}, was {last['status']} ({last['decision']}) "
                f"at {zoned_minute(last['decided_at'])}"
                if last
                else ""
            ),
        )

    training = status["last_training"]
    cycle_run = status["last_cycle_run"]
    if training is not None:
        at = zoned_minute(training["at"])
        texts = [f"{training['model_id']} ({training['status']}), cycle {training['partition']}, {at}"]
    else:
        texts = ["no model trained yet"]
    if cycle_run is not None:
        texts.append(
            f"last finetune_cycle_job run {cycle_run['run_id'].split('-')[0]}: {cycle_run['status']}"
            + (f" (partition {cycle_run['partition']})" if cycle_run["partition"] else "")
        )
    row("Last training", *texts)

    waiting = status["waiting_examples"]
    if waiting["posts_table"] is None:
        row(
            "Waiting examples",
            "no posts table in this database yet: `make demo` creates the demo's, or point DATABASE_URL at the "
            "app's database",
        )
    else:
        verdict = (
            "enough for a cycle: training_data_sensor starts one"
            if waiting["enough_for_a_cycle"]
            else f"{waiting['training_data_threshold'] - waiting['qualifying_unused_posts']} more needed"
        )
        row(
            "Waiting examples",
            f"{waiting['qualifying_unused_posts']} qualifying posts not yet used (training_data_threshold "
            f"{waiting['training_data_threshold']}): {verdict}",
            f"qualifying: engagement rate ≥ {waiting['engagement_threshold']:g} with ≥ {waiting['min_impressions']} "
            "impressions",
        )
    if status["waiting_candidate"]:
        candidate = status["waiting_candidate"]
        row("Waiting candidate", f"{candidate['model_id']} (cycle {candidate['partition']}) waits for its experiment")
    row("In production", status["model_in_production"])

    tick = status["next_schedule_tick"]
    stopped = tick["state"] != "RUNNING"
    row(
        "Next schedule tick",
        f"{tick['schedule']}: {zoned_minute(tick['at'])} (in {format_duration(tick['in_s'])}), fills cycle "
        f"{tick['fills_partition']}",
        "the schedule is STOPPED: it fires only once turned on (UI: Automation)"
        if stopped
        else "the schedule is RUNNING",
    )
    row("Sensors", ", ".join(f"{name} {state}" for name, state in status["sensors"].items()))
    lines.append("")
    lines.append(f"Dagster instance {status['dagster_instance']}")
    return "\n".join(lines)
