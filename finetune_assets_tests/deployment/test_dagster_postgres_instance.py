"""deploy/dagster.postgres.yaml: a Dagster instance whose run, event log and schedule storage are dagster-postgres,
loaded the way `DAGSTER_HOME` loads it, with its credentials from the environment (a throw-away database).

Marked `integration`: it fails, never skips, when Postgres is unreachable (`make test` starts it).
"""

from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage

from finetune_assets.assets import training_data
from finetune_assets.resources.store import StoreResource
from finetune_assets.sensors import training_data_sensor
from finetune_assets.store.platform import PlatformStore
from finetune_assets_tests.conftest import resources_for, seed
from finetune_assets_tests.fixtures.services import POSTGRES_INSTANCE_YAML

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def test_the_variant_is_the_local_instance_with_postgres_storage_and_no_secret() -> None:
    variant = yaml.safe_load(POSTGRES_INSTANCE_YAML.read_text())
    local = yaml.safe_load((REPO / "dagster.yaml").read_text())
    production = yaml.safe_load((REPO / "deploy" / "dagster.yaml").read_text())
    assert {k: v for k, v in variant.items() if k != "storage"} == local
    db = variant["storage"]["postgres"]["postgres_db"]
    assert {key: value for key, value in db.items() if key != "scheme"} == {
        "hostname": {"env": "DAGSTER_PG_HOST"},
        "port": {"env": "DAGSTER_PG_PORT"},
        "username": {"env": "DAGSTER_PG_USERNAME"},
        "password": {"env": "DAGSTER_PG_PASSWORD"},  # the name the production instance uses
        "db_name": {"env": "DAGSTER_PG_DB"},
    }
    assert production["storage"]["postgres"]["postgres_db"]["password"] == db["password"]


def test_a_sensor_tick_and_a_training_data_run_on_the_postgres_instance(
    pg_dagster_instance: dg.DagsterInstance,
    pg_store: PlatformStore,
    postgres_url: str,
    config_path: Path,
    state_dir: Path,
) -> None:
    instance = pg_dagster_instance
    assert isinstance(instance.run_storage, PostgresRunStorage)
    assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
    assert isinstance(instance.schedule_storage, PostgresScheduleStorage)
    seed(pg_store, n_posts=900)
    resources = {**resources_for(config_path, state_dir), "store": StoreResource(database_url=postgres_url)}

    tick = training_data_sensor(dg.build_sensor_context(instance=instance, resources=resources))
    assert isinstance(tick, dg.SensorResult) and tick.run_requests
    [request] = tick.run_requests
    assert request.partition_key == "2026-11-15"

    result = dg.materialize(
        [training_data],
        partition_key=request.partition_key,
        tags=request.tags,
        resources=resources,
        instance=instance,
    )
    assert result.success

    # What the UI and the daemon read back from Postgres: the run, its tags, the materialization, the checks.
    [run] = instance.get_runs()
    assert run.run_id == result.run_id and run.status == dg.DagsterRunStatus.SUCCESS
    assert run.tags["dagster/partition"] == "2026-11-15"
    assert run.tags["finetune_assets/trigger"] == "training_data_sensor"
    event = instance.get_latest_materialization_event(dg.AssetKey("training_data"))
    assert event is not None and event.run_id == run.run_id
    dataset_id = event.asset_materialization.metadata["dataset_id"].value  # type: ignore[union-attr]
    dataset = pg_store.get_dataset(str(dataset_id))
    assert dataset is not None and dataset.status == "validated"
    checks = instance.event_log_storage.get_latest_asset_check_execution_by_key(
        [dg.AssetCheckKey(dg.AssetKey("training_data"), "enough_examples")]
    )
    assert [c.status.value for c in checks.values()] == ["SUCCEEDED"]

    # The next tick sees the posts taken: nothing more to train on.
    again = training_data_sensor(dg.build_sensor_context(instance=instance, resources=resources, cursor=tick.cursor))
    assert isinstance(again, dg.SkipReason) and "threshold" in (again.skip_message or "")
