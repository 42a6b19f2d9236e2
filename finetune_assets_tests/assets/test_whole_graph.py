"""The whole loop through Dagster: real (small) training, simulated A/B traffic, the sensor firing at the
window's end, the decision, and the registry. Slow by nature (~1 min). The main loop tracks, registers and moves
the alias through the session's `mlflow server` and caches evaluation scores in the real Redis."""

import json
import shutil
from pathlib import Path

import dagster as dg
import pytest
from mlflow import MlflowClient

from finetune_assets.assets import fine_tuned_model
from finetune_assets.cli.demo import simulate_ab_traffic
from finetune_assets.definitions import defs
from finetune_assets.finetuning import make_backend
from finetune_assets.finetuning.demo_base_model import DEMO_BASE_MODEL
from finetune_assets.resources.cache import RedisResource
from finetune_assets.resources.tracking import TrackingResource
from finetune_assets.sensors import ab_test_sensor
from finetune_assets.settings import load_settings
from finetune_assets.simulation import generate_corpus
from finetune_assets.store.platform import PlatformStore
from finetune_assets_tests import demo_world
from finetune_assets_tests.conftest import NOW, resources_for, write_config

pytestmark = pytest.mark.slow
WORLD = demo_world.WORLD  # the world the session's demo base model was pretrained on
CYCLE = "2026-11-15"
SMALL = {
    "training_data_threshold": 50,
    "training": {"n_epochs": 2, "learning_rate": 0.003, "batch_size": 16, "max_seq_len": 128},
    "evaluation": {"max_holdout_examples": 40, "min_holdout_examples": 10, "max_new_tokens": 40},
    "experiment": {"min_users_per_arm": 30},
}


@pytest.fixture
def world(tmp_path: Path, state_dir: Path, store: PlatformStore, demo_base_model: Path) -> Path:
    """WORLD's posts and the session's demo base model (pretrained on WORLD's non-qualifying posts)."""
    store.insert_posts(generate_corpus(WORLD, now=NOW))
    shutil.copytree(demo_base_model, state_dir / "base_models" / DEMO_BASE_MODEL)
    return write_config(tmp_path / "c.yaml", state_dir, **SMALL)


def run(
    job: str, config: Path, state_dir: Path, instance: dg.DagsterInstance, now=NOW, **services: object
) -> dg.ExecuteInProcessResult:
    return defs.resolve_job_def(job).execute_in_process(
        instance=instance,
        partition_key=CYCLE,
        resources=resources_for(config, state_dir, now, **services),
        raise_on_error=False,
    )


def materialized(result: dg.ExecuteInProcessResult) -> dict[str, dict]:
    return {
        e.asset_key.to_user_string(): {k: v.value for k, v in e.materialization.metadata.items()}
        for e in result.get_asset_materialization_events()
    }


@pytest.mark.integration
def test_the_whole_loop_promotes_through_the_sensor_and_registers_lineage(
    world: Path,
    state_dir: Path,
    store: PlatformStore,
    instance: dg.DagsterInstance,
    mlflow_tracking: TrackingResource,
    redis_resource: RedisResource,
) -> None:
    settings = load_settings(world)
    services = {"tracking": mlflow_tracking, "redis": redis_resource}
    cycle = run("finetune_cycle_job", world, state_dir, instance, **services)
    assert cycle.success, [e.message for e in cycle.all_events if e.is_failure]
    assets = materialized(cycle)
    assert set(assets) == {"training_data", "fine_tuned_model", "evaluation_scores", "ab_test"}
    assert all(e.passed for e in cycle.get_asset_check_evaluations())
    assert assets["fine_tuned_model"]["status"] == "succeeded"
    assert assets["evaluation_scores"]["candidate_heldout_loss"] < assets["evaluation_scores"]["champion_heldout_loss"]
    assert assets["evaluation_scores"]["cache"] == "redis" and assets["evaluation_scores"]["cache_misses"] > 0

    # A retried fine-tune re-attaches to its job: same model, no second training.
    result_file = state_dir / "jobs" / assets["fine_tuned_model"]["job_id"] / "result.json"
    trained_at = result_file.stat().st_mtime_ns
    retry = dg.materialize(
        [fine_tuned_model],
        partition_key=CYCLE,
        resources=resources_for(world, state_dir, **services),
        instance=instance,
    )
    assert materialized(retry)["fine_tuned_model"]["model_id"] == assets["fine_tuned_model"]["model_id"]
    assert result_file.stat().st_mtime_ns == trained_at

    experiment = store.running_experiment()
    assert experiment is not None and experiment.treatment_model == assets["fine_tuned_model"]["model_id"]
    backend = make_backend("local", state_dir)
    assert simulate_ab_traffic(store, backend, settings, experiment, WORLD, progress=lambda _: None) > 100

    sensor_resources = resources_for(world, state_dir, experiment.ends_at, **services)
    early = ab_test_sensor(
        dg.build_sensor_context(instance=instance, resources=resources_for(world, state_dir, **services))
    )
    assert isinstance(early, dg.SkipReason)
    fired = ab_test_sensor(dg.build_sensor_context(instance=instance, resources=sensor_resources))
    assert isinstance(fired, dg.RunRequest) and fired.partition_key == CYCLE

    decision = run("ab_test_decision_job", world, state_dir, instance, now=experiment.ends_at, **services)
    assert decision.success, [e.message for e in decision.all_events if e.is_failure]
    outcome = materialized(decision)
    assert outcome["ab_test_outcome"]["traffic_source"].startswith("simulated audience")
    assert outcome["ab_test_outcome"]["decision"] in {"promote", "keep"}
    promoted = outcome["ab_test_outcome"]["decision"] == "promote"
    assert outcome["production_model"]["promoted"] is promoted

    client = MlflowClient(tracking_uri=mlflow_tracking.uri(), registry_uri=mlflow_tracking.uri())  # the server
    assert not (state_dir / "mlflow.db").exists()  # nothing went to the embedded store
    name = mlflow_tracking.registered_model_name
    [version] = client.search_model_versions(f"name='{name}'")
    assert version.source == f"runs:/{version.run_id}/adapter"  # the adapter the fine-tune step logged
    assert version.tags["partition"] == CYCLE
    assert version.tags["dataset_hash"] == assets["training_data"]["dataset_hash"]
    assert version.tags["job_id"] == assets["fine_tuned_model"]["job_id"]
    assert version.tags["ab_decision"] == outcome["ab_test_outcome"]["decision"]
    if promoted:
        assert client.get_model_version_by_alias(name, "champion").version == version.version
        assert version.tags["previous_champion"] == DEMO_BASE_MODEL
        assert store.production_model(default="none") == experiment.treatment_model

    # A retried decision run neither registers twice nor moves anything.
    again = run("ab_test_decision_job", world, state_dir, instance, now=experiment.ends_at, **services)
    assert again.success
    assert len(client.search_model_versions(f"name='{name}'")) == 1

    # Lineage: production_model reaches back to the app's posts, and the posts that trained it are listed.
    graph = defs.resolve_asset_graph()
    upstream = set(graph.get(dg.AssetKey("production_model")).parent_keys)  # a copy: never mutate the graph
    chain = set()
    while upstream:
        key = upstream.pop()
        chain.add(key.to_user_string())
        upstream |= set(graph.get(key).parent_keys)
    assert "generated_posts" in chain and "training_data" in chain
    trained = store.ledger_posts(assets["training_data"]["dataset_id"], role="train")
    assert len(trained) == assets["training_data"]["n_train"]
    assert json.dumps(assets["training_data"]["rejected_by_reason"])


def test_a_failed_fine_tune_stops_everything_downstream(
    world: Path, tmp_path: Path, state_dir: Path, store: PlatformStore, instance: dg.DagsterInstance
) -> None:
    exploding = write_config(tmp_path / "boom.yaml", state_dir, **{**SMALL, "training": {"learning_rate": 1.0}})
    result = run("finetune_cycle_job", exploding, state_dir, instance)
    assert not result.success
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert checks["job_succeeded"].passed is False or checks["losses_finite"].passed is False
    assert set(materialized(result)) == {"training_data", "fine_tuned_model"}
    assert store.running_experiment() is None
