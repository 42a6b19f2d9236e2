import http.server
import json
import threading
from datetime import timedelta
from pathlib import Path

import dagster as dg

from finetune_assets.definitions import defs
from finetune_assets.sensors import ab_test_sensor, training_data_sensor
from finetune_assets.store.platform import PlatformStore
from finetune_assets_tests.conftest import NOW, resources_for, seed, start_experiment, write_config


def tick(sensor, instance, config: Path, state_dir: Path, cursor: str | None = None, now=NOW):
    context = dg.build_sensor_context(
        instance=instance, cursor=cursor, resources=resources_for(config, state_dir, now), definitions=defs
    )
    return sensor(context)


def test_training_data_sensor_fires_once_per_set_of_posts(
    tmp_path: Path, state_dir: Path, store: PlatformStore, instance: dg.DagsterInstance
) -> None:
    config = write_config(tmp_path / "c.yaml", state_dir, training_data_threshold=50)
    skipped = tick(training_data_sensor, instance, config, state_dir)
    assert isinstance(skipped, dg.SkipReason)
    assert "0 qualifying examples" in (skipped.skip_message or "")

    seed(store, n_posts=600)
    waiting, newest = store.count_qualifying(100, 0.06)
    assert waiting >= 50
    fired = tick(training_data_sensor, instance, config, state_dir, cursor="0")
    assert isinstance(fired, dg.SensorResult)
    assert fired.cursor == str(newest)
    [request] = fired.run_requests or []
    assert request.run_key == f"posts-upto-{newest}"
    assert request.partition_key == "2026-11-15"  # the newest completed week at Wednesday 2026-11-25

    again = tick(training_data_sensor, instance, config, state_dir, cursor=fired.cursor)
    assert isinstance(again, dg.SkipReason) and "already requested" in (again.skip_message or "")


def test_training_data_sensor_waits_while_an_experiment_runs(
    tmp_path: Path, state_dir: Path, store: PlatformStore, instance: dg.DagsterInstance
) -> None:
    config = write_config(tmp_path / "c.yaml", state_dir, training_data_threshold=50)
    seed(store, n_posts=600)
    start_experiment(store)
    skipped = tick(training_data_sensor, instance, config, state_dir)
    assert isinstance(skipped, dg.SkipReason)
    assert "experiment exp-1 runs until" in (skipped.skip_message or "")
    assert "training waits" in (skipped.skip_message or "")


def test_ab_test_sensor_waits_for_the_window_then_fires_once(
    tmp_path: Path, state_dir: Path, store: PlatformStore, instance: dg.DagsterInstance
) -> None:
    config = write_config(tmp_path / "c.yaml", state_dir)
    assert "no experiment" in (tick(ab_test_sensor, instance, config, state_dir).skip_message or "")
    experiment = start_experiment(store, ends_in_hours=30)
    waiting = tick(ab_test_sensor, instance, config, state_dir)
    assert isinstance(waiting, dg.SkipReason) and "30.0 h left" in (waiting.skip_message or "")
    fired = tick(ab_test_sensor, instance, config, state_dir, now=experiment.ends_at)
    assert isinstance(fired, dg.RunRequest)
    assert fired.run_key == "exp-1" and fired.partition_key == "2026-11-15"
    later = tick(ab_test_sensor, instance, config, state_dir, now=experiment.ends_at + timedelta(hours=5))
    assert isinstance(later, dg.RunRequest) and later.run_key == fired.run_key  # same key: Dagster dedupes


def test_schedule_fills_the_week_that_just_ended() -> None:
    schedule = defs.resolve_schedule_def("weekly_finetune_schedule")
    sunday = dg.build_schedule_context(scheduled_execution_time=NOW.replace(day=29, hour=2, minute=0))
    [request] = schedule.evaluate_tick(sunday).run_requests or []
    assert request.partition_key == "2026-11-22"


def test_run_failure_sensor_reports_the_failed_run(monkeypatch, instance: dg.DagsterInstance) -> None:
    from finetune_assets import sensors

    @dg.op
    def explode() -> None:
        raise RuntimeError("disk full")

    @dg.job
    def failing_job() -> None:
        explode()

    result = failing_job.execute_in_process(instance=instance, raise_on_error=False)
    failure = next(e for e in result.all_events if e.event_type_value == "PIPELINE_FAILURE")
    posted: list[dict] = []

    class Receiver(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            posted.append({"path": self.path, **json.loads(self.rfile.read(int(self.headers["Content-Length"])))})
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.handle_request, daemon=True).start()
    monkeypatch.setenv(sensors.ALERT_WEBHOOK_ENV, f"http://127.0.0.1:{server.server_port}/alerts")
    context = dg.build_run_status_sensor_context(
        sensor_name="finetune_run_failure_sensor",
        dagster_event=failure,
        dagster_instance=instance,
        dagster_run=result.dagster_run,
    ).for_run_failure()
    sensors.finetune_run_failure_sensor(context)
    assert posted and posted[0]["run_id"] == result.run_id and posted[0]["job"] == "failing_job"
    assert posted[0]["path"] == "/alerts"
    assert "explode" in posted[0]["message"]
    server.server_close()
