"""`finetune-assets status` as a person runs it, after a demo cycle and while an experiment runs."""

import json
import re
from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest

from finetune_assets.partitions import current_cycle, weekly_cycle_partitions
from finetune_assets.resources.store import StoreResource
from finetune_assets_tests.cli.test_lineage import cli

pytestmark = pytest.mark.slow


def test_status_after_a_demo_cycle(demo_instance) -> None:
    result = cli(demo_instance.env(), "status")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    store = StoreResource(state_dir=str(demo_instance.state_dir)).get()
    waiting, _ = store.count_qualifying(100, 0.06)
    assert waiting > 0  # next week's posts arrived after the cycle
    for expected in (
        r"Running now\s+no run in progress",
        rf"none running; the last, {demo_instance.experiment_id}, was decided \(promote\)",
        rf"Last training\s+{re.escape(demo_instance.model_id)} \(succeeded\), cycle {demo_instance.partition}",
        r"last finetune_cycle_job run [0-9a-f]{8}: SUCCESS",
        rf"Waiting examples\s+{waiting} qualifying posts not yet used \(training_data_threshold 50\)",
        rf"In production\s+{re.escape(demo_instance.model_id)}",
        r"Next schedule tick\s+weekly_finetune_schedule: \d{4}-\d\d-\d\d 02:00 UTC \(in ",
        r"the schedule is STOPPED",
        r"training_data_sensor STOPPED, ab_test_sensor STOPPED, finetune_run_failure_sensor STOPPED",
    ):
        assert re.search(expected, out), f"{expected!r} missing from:\n{out}"

    data = json.loads(cli(demo_instance.env(), "status", "--json").stdout)
    tick = datetime.fromisoformat(data["next_schedule_tick"]["at"])
    now = datetime.fromisoformat(data["now"])
    assert (tick.weekday(), tick.hour, tick.minute) == (6, 2, 0)  # Sunday 02:00 UTC: cron 0 2 * * 0
    assert timedelta(0) < tick - now <= timedelta(days=7)
    assert data["next_schedule_tick"]["fills_partition"] == current_cycle(weekly_cycle_partitions, tick)
    assert data["waiting_examples"] == {
        "posts_table": "generated_posts",
        "qualifying_unused_posts": waiting,
        "training_data_threshold": 50,
        "engagement_threshold": 0.06,
        "min_impressions": 100,
        "enough_for_a_cycle": waiting >= 50,
    }


def test_status_shows_the_running_experiment_its_hours_left_and_runs_in_progress(demo_instance, tmp_path) -> None:
    copy = demo_instance.copy_to(tmp_path / "copy")
    store = StoreResource(state_dir=str(copy.state_dir)).get()
    now = datetime.now(UTC)
    store.start_experiment(
        experiment_id="exp-2026-11-22-abcdef",
        partition_key="2026-11-22",
        control_model=copy.model_id,
        treatment_model="ft:demo-tiny-gpt2:cycle-2026-11-22:local-0123",
        salt="00ff00ff00ff00ff",
        split=0.5,
        coverage=1.0,
        started_at=now - timedelta(hours=10),
        ends_at=now + timedelta(hours=158),
    )
    with dg.DagsterInstance.from_config(str(copy.home)) as instance:  # a run as the run launcher records it
        instance.add_run(
            dg.DagsterRun(
                job_name="finetune_cycle_job",
                run_id="5eed0000-0000-4000-8000-000000000001",
                status=dg.DagsterRunStatus.STARTED,
                tags={"dagster/partition": "2026-11-22"},
            )
        )
    result = cli(copy.env(), "status")
    assert result.returncode == 0, result.stderr
    assert re.search(r"exp-2026-11-22-abcdef running, 15[78]\.\d h left \(ends ", result.stdout), result.stdout
    assert "candidate ft:demo-tiny-gpt2:cycle-2026-11-22:local-0123 vs " in result.stdout
    assert "finetune_cycle_job run 5eed0000 (STARTED, partition 2026-11-22" in result.stdout
    data = json.loads(cli(copy.env(), "status", "--json").stdout)
    assert 157.9 < data["active_experiment"]["hours_left"] <= 158.0
    assert [r["run_id"] for r in data["runs_in_progress"]] == ["5eed0000-0000-4000-8000-000000000001"]
