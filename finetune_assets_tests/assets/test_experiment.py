"""ab_test, ab_test_sensor and ab_test_outcome: one experiment at a time, the power gate, the hourly monitor and
its early stops, the decision, and the routing snapshot in Redis."""

import json
from datetime import timedelta
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
import redis

from finetune_assets.assets import ab_test, ab_test_outcome, evaluation_scores
from finetune_assets.experiments.runtime.router import redis_key
from finetune_assets.resources.cache import RedisResource
from finetune_assets.sensors import ab_test_sensor
from finetune_assets.simulation import DemoWorldConfig, generate_corpus
from finetune_assets.store.platform import PlatformStore
from finetune_assets.store.records import ExperimentRecord
from finetune_assets_tests.conftest import NOW, resources_for, start_experiment, write_config
from finetune_assets_tests.experiments.demo_traffic import DemoAudience


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

    store.decide_experiment(running.experiment_id, status="decided", decision="keep", reason="r", details={})
    half_done = ab_test_sensor(dg.build_sensor_context(instance=instance, resources=resources_for(config, state_dir)))
    assert isinstance(half_done, dg.RunRequest) and half_done.asset_selection == [dg.AssetKey("production_model")]
    store.record_promotion(  # what that production_model run records: the decision is now complete
        experiment_id=running.experiment_id,
        model_id="base",
        previous_model_id="base",
        registry_version="1",
        promoted=False,
    )
    request = ab_test_sensor(dg.build_sensor_context(instance=instance, resources=resources_for(config, state_dir)))
    assert isinstance(request, dg.RunRequest)
    assert request.run_key == f"start-{evaluation_id}"
    assert request.job_name == "finetune_cycle_job" and request.asset_selection == [ab_test.key]
    assert request.partition_key == "2026-11-08"

    started = start_ab_test(config, state_dir, instance)
    assert started.success
    experiment = store.running_experiment()
    assert experiment is not None and experiment.treatment_model == "ft:new"
    assert store.waiting_candidate() is None


# --- the experiment engine through the assets: power gate, hourly monitor, early stop, decision, routing ---


WORLD = DemoWorldConfig(seed=5, n_users=3000, n_posts=1500)


def tick(config: Path, state_dir: Path, instance: dg.DagsterInstance, now):
    return ab_test_sensor(dg.build_sensor_context(instance=instance, resources=resources_for(config, state_dir, now)))


def outcome(config: Path, state_dir: Path, instance: dg.DagsterInstance, now, partition: str = "2026-11-15"):
    return dg.materialize(
        [ab_test, ab_test_outcome],
        selection=[ab_test_outcome.key],
        partition_key=partition,
        resources=resources_for(config, state_dir, now),
        instance=instance,
        raise_on_error=False,
    )


def add_traffic(
    store: PlatformStore, experiment: ExperimentRecord, until, *, multiplier: float, drop_treatment: float = 0.0
):
    """SIMULATED posts of the experiment's window created before `until` (demo audience)."""
    rows = DemoAudience.of(WORLD).window_posts(
        experiment, treatment_multiplier=multiplier, rng=np.random.default_rng(1), first_post_id=store.max_post_id() + 1
    )
    rng = np.random.default_rng(2)
    lost = {r["user_id"] for r in rows if r["variant"] == "treatment" and rng.random() < drop_treatment}
    store.insert_posts(r for r in rows if r["created_at"] < until and r["user_id"] not in lost)


def test_the_monitor_looks_hourly_and_stops_a_harmful_candidate_early(
    tmp_path: Path, state_dir: Path, store: PlatformStore, instance: dg.DagsterInstance
) -> None:
    config = write_config(tmp_path / "c.yaml", state_dir)
    experiment = start_experiment(store, ends_in_hours=168)  # started at NOW
    add_traffic(store, experiment, NOW + timedelta(hours=60), multiplier=0.6)

    first = tick(config, state_dir, instance, NOW + timedelta(hours=1))
    assert isinstance(first, dg.SkipReason) and "too early for any decision" in (first.skip_message or "")
    soon = tick(config, state_dir, instance, NOW + timedelta(hours=1, minutes=20))
    assert isinstance(soon, dg.SkipReason) and "next monitor look at 14:00 UTC" in (soon.skip_message or "")
    looked = store.get_experiment("exp-1")
    assert looked is not None and looked.details.monitor_looks == 1

    stop = tick(config, state_dir, instance, NOW + timedelta(hours=60))
    assert isinstance(stop, dg.RunRequest), stop
    assert stop.run_key == "exp-1" and stop.job_name == "ab_test_decision_job"
    assert stop.tags["finetune_assets/early_stop"] == "stop_harm"
    stopped = store.get_experiment("exp-1")
    assert stopped is not None and stopped.details.harm_alarm is True
    assert stopped.details.early_stop is not None and stopped.details.early_stop.action == "stop_harm"
    again = tick(config, state_dir, instance, NOW + timedelta(hours=61))
    assert isinstance(again, dg.RunRequest) and again.run_key == "exp-1"  # same key: one decision run

    result = outcome(config, state_dir, instance, NOW + timedelta(hours=61))
    assert result.success
    decided = store.get_experiment("exp-1")
    assert decided is not None and decided.status == "decided" and decided.decision == "keep"
    assert decided.details.decision is not None and decided.details.decision.code == "harm_alarm"
    assert decided.details.decision.decided_until == NOW + timedelta(hours=60)  # traffic after the stop
    metadata = result.asset_materializations_for_node("ab_test_outcome")[0].metadata
    assert metadata["decision"].value == "keep" and metadata["harm_alarm"].value is True
    assert "stop and roll back" in metadata["stopped_early"].value


def test_a_sample_ratio_mismatch_stops_the_test_as_invalid_and_blocks_promotion(
    tmp_path: Path, state_dir: Path, store: PlatformStore, instance: dg.DagsterInstance
) -> None:
    config = write_config(tmp_path / "c.yaml", state_dir)
    experiment = start_experiment(store, ends_in_hours=168)
    add_traffic(store, experiment, NOW + timedelta(hours=100), multiplier=1.0, drop_treatment=0.35)
    stop = tick(config, state_dir, instance, NOW + timedelta(hours=100))
    assert isinstance(stop, dg.RunRequest) and stop.tags["finetune_assets/early_stop"] == "stop_srm"

    result = outcome(config, state_dir, instance, NOW + timedelta(hours=100))
    decided = store.get_experiment("exp-1")
    assert decided is not None and decided.status == "invalid"
    assert decided.details.decision is not None and decided.details.decision.code == "srm"
    [check] = [c for c in result.get_asset_check_evaluations() if c.check_name == "no_sample_ratio_mismatch"]
    assert not check.passed  # blocking: production_model does not run on an invalid test


def test_the_power_gate_refuses_or_records_an_underpowered_test(
    tmp_path: Path, state_dir: Path, store: PlatformStore, instance: dg.DagsterInstance
) -> None:
    store.insert_posts(generate_corpus(WORLD, now=NOW))
    store.record_evaluation(partition_key="2026-11-15", candidate="ft:new", champion="base", passed=True, scores={})

    def launch(config: Path) -> dg.ExecuteInProcessResult:
        return dg.materialize(
            [ab_test],
            partition_key="2026-11-15",
            resources=resources_for(config, state_dir),
            instance=instance,
            raise_on_error=False,
        )

    refused = launch(write_config(tmp_path / "refuse.yaml", state_dir, experiment={"underpowered": "refuse"}))
    assert not refused.success
    failure = next(e for e in refused.all_events if e.event_type_value == "STEP_FAILURE")
    message = str(failure.event_specific_data.error)
    assert "the experiment does not start — under-powered" in message and "users" in message
    assert store.running_experiment() is None

    started = launch(write_config(tmp_path / "warn.yaml", state_dir))
    assert started.success
    metadata = started.asset_materializations_for_node("ab_test")[0].metadata
    assert metadata["powered"].value is False and "under-powered" in metadata["power_gate"].value
    experiment = store.running_experiment()
    assert experiment is not None and experiment.details.n_star == metadata["forecast_users"].value > 0
    assert metadata["required_users"].value > metadata["forecast_users"].value

    powered = launch(
        write_config(tmp_path / "big-mde.yaml", state_dir, experiment={"min_detectable_effect": 0.9})
    )  # re-attaches to the running experiment: the gate is not run twice
    assert powered.success


@pytest.mark.integration
def test_routing_is_published_to_redis_on_start_and_decision(
    tmp_path: Path, state_dir: Path, store: PlatformStore, instance: dg.DagsterInstance, monkeypatch
) -> None:
    client = redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=2)
    prefix = f"test-{tmp_path.name}"
    key = redis_key(f"{prefix}:routing")
    resources = resources_for(write_config(tmp_path / "c.yaml", state_dir), state_dir)
    resources["redis"] = RedisResource(url="redis://127.0.0.1:6379/0", key_prefix=prefix)
    store.record_evaluation(partition_key="2026-11-15", candidate="ft:new", champion="base", passed=True, scores={})
    try:
        assert dg.materialize([ab_test], partition_key="2026-11-15", resources=resources, instance=instance).success
        snapshot = json.loads(client.get(key))
        running = store.running_experiment()
        assert running is not None and snapshot["experiment"]["experiment_id"] == running.experiment_id
        assert snapshot["experiment"]["treatment_model"] == "ft:new" and snapshot["experiment"]["salt"] == running.salt

        resources["clock"] = resources_for(tmp_path / "c.yaml", state_dir, NOW + timedelta(hours=169))["clock"]
        dg.materialize(
            [ab_test, ab_test_outcome],
            selection=[ab_test_outcome.key],
            partition_key="2026-11-15",
            resources=resources,
            instance=instance,
            raise_on_error=False,
        )
        assert json.loads(client.get(key))["experiment"] is None  # decided: everyone back on production
    finally:
        client.delete(key)
