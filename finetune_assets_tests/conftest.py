"""Shared fixtures: a temporary state directory, a config file, a seeded store, a Dagster instance."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest
import yaml

from finetune_assets.resources.cache import RedisResource
from finetune_assets.resources.clock import ClockResource
from finetune_assets.resources.config import PipelineConfigResource
from finetune_assets.resources.openai import OpenAIResource
from finetune_assets.resources.store import StoreResource
from finetune_assets.resources.tracking import TrackingResource
from finetune_assets.settings import Settings, load_settings
from finetune_assets.simulation import DemoWorldConfig, generate_corpus
from finetune_assets.store.platform import PlatformStore
from finetune_assets.store.records import ExperimentRecord

# Service fixtures live in their own modules: the OpenAI-compatible test server, the MLflow tracking server,
# Postgres and Redis isolation.
pytest_plugins = [
    "finetune_assets_tests.fixtures.openai_server",
    "finetune_assets_tests.fixtures.mlflow_server",
    "finetune_assets_tests.fixtures.services",
]

SERVICE_FIXTURES = frozenset(
    {
        "postgres_url",
        "pg_store",
        "pg_dagster_instance",
        "redis_resource",
        "private_redis",
        "mlflow_server",
        "mlflow_tracking",
    }
)
"""A test that asks for one of these talks to a real service: it is `integration` whatever its module says."""
TRAINING_FIXTURES = frozenset({"demo_base_model", "demo_instance"})
"""A test that asks for one of these trains a model first: it is `slow`."""


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark by what a test uses, before `-m` selects: `make test-fast` can then never start a service or train."""
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        if used & SERVICE_FIXTURES:
            item.add_marker(pytest.mark.integration)
        if used & TRAINING_FIXTURES:
            item.add_marker(pytest.mark.slow)


NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)  # a Wednesday: the newest cycle is the week of 2026-11-15


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    path = tmp_path / "state"
    path.mkdir()
    return path


def write_config(path: Path, state_dir: Path, **overrides: object) -> Path:
    data = yaml.safe_load((Path(__file__).resolve().parent.parent / "pipeline_config.yaml").read_text())
    data.update({"state_dir": str(state_dir), **overrides})
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def config_path(tmp_path: Path, state_dir: Path) -> Path:
    return write_config(tmp_path / "pipeline_config.yaml", state_dir)


@pytest.fixture
def settings(config_path: Path) -> Settings:
    return load_settings(config_path)


@pytest.fixture
def store(state_dir: Path) -> PlatformStore:
    db = StoreResource(state_dir=str(state_dir)).get()
    db.create_posts_table()
    return db


def seed(store: PlatformStore, n_posts: int = 600, n_users: int = 200, seed: int = 3) -> int:
    world = DemoWorldConfig(seed=seed, n_users=n_users, n_posts=n_posts)
    return store.insert_posts(generate_corpus(world, now=NOW))


def resources_for(
    config_path: Path, state_dir: Path, now: datetime | None = None, **overrides: object
) -> dict[str, object]:
    """The embedded defaults; `overrides` swap in real services (e.g. `tracking=`, `redis=`)."""
    return {
        "pipeline": PipelineConfigResource(config_path=str(config_path)),
        "store": StoreResource(state_dir=str(state_dir)),
        "tracking": TrackingResource(state_dir=str(state_dir)),
        "clock": ClockResource(fixed_now=(now or NOW).isoformat()),
        "redis": RedisResource(),
        "openai": OpenAIResource(),
        **overrides,
    }


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as inst:
        yield inst


@pytest.fixture(scope="session")
def demo_base_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo base model, pretrained once per test session (demo_world.build_base_model, ~25 s on 2 cores)."""
    from finetune_assets_tests.demo_world import build_base_model

    return build_base_model(tmp_path_factory.mktemp("base"))


@pytest.fixture(scope="session")
def demo_instance(tmp_path_factory: pytest.TempPathFactory, demo_base_model: Path):  # -> DemoInstance
    """One whole demo cycle materialized into an on-disk Dagster instance, shared read-only by the tests that
    look at it as a person does (CLI verbs, browser). A test that changes it works on `copy_to(...)`."""
    from finetune_assets_tests.demo_world import materialize_demo_world

    return materialize_demo_world(tmp_path_factory.mktemp("demo"), demo_base_model)


def start_experiment(store: PlatformStore, ends_in_hours: float = 168) -> ExperimentRecord:
    """A running experiment `exp-1` of cycle 2026-11-15 whose window ends `ends_in_hours` after NOW."""
    return store.start_experiment(
        experiment_id="exp-1",
        partition_key="2026-11-15",
        control_model="base",
        treatment_model="ft:cand",
        salt="s",
        split=0.5,
        coverage=1.0,
        started_at=NOW - timedelta(hours=168 - ends_in_hours),
        ends_at=NOW + timedelta(hours=ends_in_hours),
    )


def record_candidate(store: PlatformStore, adapter: Path, mlflow_run_id: str | None = None) -> None:
    """What a cycle's training and evaluation leave for `production_model`: a dataset, the succeeded model
    `ft:cand` (start_experiment's treatment) with its adapter directory, and a passed evaluation."""
    with store.engine.begin() as conn:
        dataset_id = store.record_dataset(
            conn, partition_key="2026-11-15", dataset_hash="d" * 64, train=[], holdout=[], rejected=[], details={}
        )
    run = {"mlflow_run_id": mlflow_run_id} if mlflow_run_id else {}
    store.record_model(
        model_id="ft:cand",
        partition_key="2026-11-15",
        dataset_id=dataset_id,
        backend="local",
        base_model="base",
        job_id="local-abc",
        status="succeeded",
        details={**run, "artifact_uri": str(adapter)},
    )
    row = {"heldout_loss": 1.0, "predicted_engagement": 0.05}
    scores = {"candidate": row, "champion": row}
    store.record_evaluation(
        partition_key="2026-11-15", candidate="ft:cand", champion="base", passed=True, scores=scores
    )
