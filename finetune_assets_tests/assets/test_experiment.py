"""Only one experiment at a time: a new candidate waits, and ab_test_sensor starts it when the slot frees."""

from pathlib import Path

import dagster as dg

from finetune_assets.assets import ab_test, evaluation_scores
from finetune_assets.resources.store import PlatformStore
from finetune_assets.sensors import ab_test_sensor
from finetune_assets_tests.conftest import resources_for, start_experiment, write_config


def start_ab_test(config: Path, state_dir: Path, instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [evaluation_scores, ab_test],
        selection=[ab_test.key],
        partition_key="2026-11-08",
        resources=resources_for(config, state_dir),
        instance=instance,
        raise_on_error=False,
    )


def test_a_candidate_waits_for_the_running_experiment_then_starts(
    tmp_path: Path, state_dir: Path, store: PlatformStore, instance: dg.DagsterInstance
) -> None:
    config = write_config(tmp_path / "c.yaml", state_dir)
    running = start_experiment(store, ends_in_hours=10)
    evaluation_id = store.record_evaluation(
        partition_key="2026-11-08", candidate="ft:new", champion="base", passed=True, scores={}
    )

    blocked = start_ab_test(config, state_dir, instance)
    assert not blocked.success
    failure = next(e for e in blocked.all_events if e.event_type_value == "STEP_FAILURE")
    assert "only one experiment runs at a time, so this candidate waits" in str(failure.event_specific_data.error)

    store.decide_experiment(running["experiment_id"], status="decided", decision="keep", reason="r", details={})
    request = ab_test_sensor(dg.build_sensor_context(instance=instance, resources=resources_for(config, state_dir)))
    assert isinstance(request, dg.RunRequest)
    assert request.run_key == f"start-{evaluation_id}"
    assert request.job_name == "finetune_cycle_job" and request.asset_selection == [ab_test.key]
    assert request.partition_key == "2026-11-08"

    started = start_ab_test(config, state_dir, instance)
    assert started.success
    experiment = store.running_experiment()
    assert experiment is not None and experiment["treatment_model"] == "ft:new"
    assert store.waiting_candidate() is None
