"""The whole loop on Postgres: `DATABASE_URL` points the platform store (the app's posts and the ft_* tables) at
a throw-away database, and the Dagster instance is deploy/dagster.postgres.yaml over another one. Real (small)
training, simulated A/B traffic, the sensor at the window's end, the decision. Slow by nature (~1 min).

Marked `integration`: it fails, never skips, when Postgres is unreachable (`make test` starts it).
"""

import dataclasses
import shutil
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa

from finetune_assets.cli.demo import simulate_ab_traffic
from finetune_assets.definitions import build_resources, defs
from finetune_assets.finetuning import make_backend
from finetune_assets.finetuning.demo_base_model import DEMO_BASE_MODEL
from finetune_assets.resources.store import StoreResource
from finetune_assets.sensors import ab_test_sensor
from finetune_assets.settings import load_settings
from finetune_assets.simulation import generate_corpus
from finetune_assets.store.platform import PlatformStore
from finetune_assets.store.schema import datasets, experiments, ledger
from finetune_assets_tests import demo_world
from finetune_assets_tests.assets.test_whole_graph import SMALL
from finetune_assets_tests.conftest import NOW, resources_for, write_config

pytestmark = [pytest.mark.slow, pytest.mark.integration]
CYCLE = "2026-11-15"


def test_the_whole_graph_materializes_with_database_url_on_postgres(
    pg_dagster_instance: dg.DagsterInstance,
    pg_store: PlatformStore,
    postgres_url: str,
    tmp_path: Path,
    state_dir: Path,
    demo_base_model: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    instance = pg_dagster_instance
    pg_store.insert_posts(generate_corpus(demo_world.WORLD, now=NOW))
    shutil.copytree(demo_base_model, state_dir / "base_models" / DEMO_BASE_MODEL)
    config = write_config(tmp_path / "c.yaml", state_dir, **SMALL)
    settings = load_settings(config)

    # The store as the code location builds it: from the DATABASE_URL environment variable (an EnvVar).
    monkeypatch.setenv("DATABASE_URL", postgres_url)
    store_resource = build_resources(settings)["store"]
    assert isinstance(store_resource, StoreResource) and store_resource.database_url == dg.EnvVar("DATABASE_URL")

    def run(job: str, now=NOW) -> dg.ExecuteInProcessResult:
        resources = {**resources_for(config, state_dir, now), "store": store_resource}
        return defs.resolve_job_def(job).execute_in_process(
            instance=instance, partition_key=CYCLE, resources=resources, raise_on_error=False
        )

    cycle = run("finetune_cycle_job")
    assert cycle.success, [e.message for e in cycle.all_events if e.is_failure]
    assert all(e.passed for e in cycle.get_asset_check_evaluations())
    experiment = pg_store.running_experiment()
    assert experiment is not None
    backend = make_backend("local", state_dir)
    # Half the demo world's users write the window's traffic: enough for the decision, half the generation time.
    audience = dataclasses.replace(demo_world.WORLD, n_users=demo_world.WORLD.n_users // 2)
    assert simulate_ab_traffic(pg_store, backend, settings, experiment, audience, progress=lambda _: None) > 50

    sensor_resources = {**resources_for(config, state_dir, experiment.ends_at), "store": store_resource}
    fired = ab_test_sensor(dg.build_sensor_context(instance=instance, resources=sensor_resources))
    assert isinstance(fired, dg.RunRequest) and fired.partition_key == CYCLE
    decision = run("ab_test_decision_job", now=experiment.ends_at)
    assert decision.success, [e.message for e in decision.all_events if e.is_failure]

    # Everything the platform wrote is in Postgres; everything Dagster recorded is in its Postgres instance.
    with pg_store.engine.connect() as conn:
        [(dataset_id, n_train, status)] = conn.execute(
            sa.select(datasets.c.dataset_id, datasets.c.n_train, datasets.c.status)
        ).all()
        trained = conn.execute(
            sa.select(sa.func.count()).where(ledger.c.dataset_id == dataset_id, ledger.c.role == "train")
        ).scalar()
        decided = conn.execute(sa.select(experiments.c.status, experiments.c.decision)).one()
    assert status == "trained" and trained == n_train > 0
    assert decided.status == "decided" and decided.decision in {"promote", "keep"}
    assert {r.status for r in instance.get_runs()} == {dg.DagsterRunStatus.SUCCESS}
    assert len(instance.get_runs()) == 2
    for key in ("training_data", "fine_tuned_model", "evaluation_scores", "ab_test", "ab_test_outcome"):
        assert instance.get_latest_materialization_event(dg.AssetKey(key)) is not None, key
    production = instance.get_latest_materialization_event(dg.AssetKey("production_model"))
    assert production is not None and production.run_id == decision.run_id
