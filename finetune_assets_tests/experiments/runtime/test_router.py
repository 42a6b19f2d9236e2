"""Router: Redis cache → SQL truth → pure-hash assignment.

SQL is a SQLite file created with the store's own tables. Tests marked ``integration`` talk to the real
Redis on 127.0.0.1:6379, each under its own key prefix, and fail (never skip) when Redis is down.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import uuid4

import pytest
import redis
import sqlalchemy as sa

from finetune_assets.experiments.runtime.assignment import assign_variant
from finetune_assets.experiments.runtime.router import (
    ActiveExperiment,
    Route,
    Router,
    RoutingSnapshot,
    RoutingUnavailable,
    publish,
    read_snapshot_from_sql,
    redis_client,
    redis_key,
)
from finetune_assets.store.engine import make_engine
from finetune_assets.store.platform import PlatformStore
from finetune_assets.store.records import ExperimentRecord
from finetune_assets.store.schema import experiments

DEFAULT = "base-model"
USERS = [str(i) for i in range(1, 2001)] + ["alice", "bob", " 42 "]
START = datetime(2026, 1, 5, tzinfo=UTC)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(tmp_path: Path) -> PlatformStore:
    return PlatformStore(make_engine(f"sqlite:///{tmp_path / 'router.db'}"))


def _start(
    store: PlatformStore, experiment_id: str = "exp-1", coverage: float = 1.0, split: float = 0.5
) -> ExperimentRecord:
    return store.start_experiment(
        experiment_id=experiment_id,
        partition_key="2026-01-04",
        control_model="prod-v1",
        treatment_model=f"cand-{experiment_id}",
        salt=f"{experiment_id}:1",
        split=split,
        coverage=coverage,
        started_at=START,
        ends_at=START + timedelta(hours=168),
    )


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _expected(user: str, experiment: ExperimentRecord | ActiveExperiment, production: str) -> Route:
    variant = assign_variant(user, experiment.salt, split=experiment.split, coverage=experiment.coverage)
    if variant is None:
        return Route(None, production, None)
    model = experiment.treatment_model if variant == "treatment" else experiment.control_model
    return Route(variant, model, experiment.experiment_id)


@pytest.fixture
def live_redis() -> Iterator[tuple[redis.Redis, str]]:
    client = redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=2, socket_timeout=2)
    assert client.ping(), "Redis on 127.0.0.1:6379 must answer for the integration tests"
    prefix = f"finetune-assets-test:{uuid4().hex}"
    try:
        yield client, prefix
    finally:
        client.delete(redis_key(prefix))
        client.close()


# --- SQL only --------------------------------------------------------------------------------------------


def test_no_experiment_routes_everyone_to_the_default_then_the_promoted_model(store: PlatformStore) -> None:
    router = Router(store.engine, default_model=DEFAULT, refresh_seconds=0)
    assert router.route("7") == Route(None, DEFAULT, None)
    store.record_promotion(
        experiment_id="exp-0", model_id="prod-v1", previous_model_id=DEFAULT, registry_version="1", promoted=True
    )
    store.record_promotion(
        experiment_id="exp-00", model_id="kept", previous_model_id="prod-v1", registry_version=None, promoted=False
    )
    assert router.route("7") == Route(None, "prod-v1", None)
    assert router.snapshot().source == "sql"


def test_running_experiment_routes_by_the_pure_hash(store: PlatformStore) -> None:
    experiment = _start(store, coverage=0.5)
    router = Router(store.engine, default_model=DEFAULT)
    routes = [router.route(u) for u in USERS]
    assert routes == [_expected(u, experiment, DEFAULT) for u in USERS]
    variants = [r.variant for r in routes]
    assert {None, "control", "treatment"} <= set(variants)
    # Determinism: another router (another replica) gives the same answers, and so does a repeat.
    other = Router(store.engine, default_model=DEFAULT)
    assert [other.route(u) for u in USERS] == routes
    assert router.route("42") == router.route(42) == router.route(" 42 ")


def test_decided_experiments_do_not_route(store: PlatformStore) -> None:
    _start(store)
    store.decide_experiment("exp-1", status="decided", decision="keep", reason="r", details={})
    assert read_snapshot_from_sql(store.engine, DEFAULT).experiment is None


def test_store_url_is_accepted(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'url.db'}"
    experiment = _start(PlatformStore(make_engine(url)))
    router = Router(url, default_model=DEFAULT)
    assert router.route("3") == _expected("3", experiment, DEFAULT)


def test_redis_down_is_only_slower(store: PlatformStore) -> None:
    experiment = _start(store, coverage=0.8)
    clock = FakeClock()
    router = Router(
        store.engine, f"redis://127.0.0.1:{_closed_port()}/0", default_model=DEFAULT, refresh_seconds=30, clock=clock
    )
    assert [router.route(u) for u in USERS] == [_expected(u, experiment, DEFAULT) for u in USERS]
    assert router.snapshot().source == "sql"
    # Backs off: no Redis call until the next refresh period (a dead Redis is not hit per request).
    assert router._redis_retry_at == pytest.approx(clock.now + 30)


def test_sql_down_serves_the_last_snapshot_and_fails_loudly_without_one(store: PlatformStore, tmp_path: Path) -> None:
    experiment = _start(store)
    clock = FakeClock()
    router = Router(store.engine, default_model=DEFAULT, refresh_seconds=30, clock=clock)
    assert router.route("5") == _expected("5", experiment, DEFAULT)
    broken = sa.create_engine(f"sqlite:///{tmp_path / 'missing' / 'nope.db'}")
    router.engine = broken
    clock.now += 31
    assert router.route("5") == _expected("5", experiment, DEFAULT)
    with pytest.raises(RoutingUnavailable, match="Redis and SQL both failed"):
        Router(broken, default_model=DEFAULT).route("5")


def test_snapshot_json_round_trip_and_validation() -> None:
    exp = ActiveExperiment("exp-9", "exp-9:1", 0.5, 1.0, "prod", "cand")
    snap = RoutingSnapshot(exp, "prod", "sql")
    again = RoutingSnapshot.from_json(snap.to_json())
    assert again.experiment == exp
    assert again.production_model == "prod"
    for bad in ('{"version": 99}', '{"version": 1, "experiment": null}', "[]"):
        with pytest.raises(ValueError):
            RoutingSnapshot.from_json(bad)
    with pytest.raises(ValueError, match="running"):
        ActiveExperiment.from_mapping({**exp.__dict__, "status": "decided"})
    with pytest.raises(ValueError, match="split"):
        ActiveExperiment.from_mapping({**exp.__dict__, "split": 1.5})
    with pytest.raises(ValueError, match="salt"):
        ActiveExperiment.from_mapping({"experiment_id": "x"})
    with pytest.raises(ValueError, match="default_model"):
        Router("sqlite://", default_model="")


# --- with the real Redis -------------------------------------------------------------------------------------


@pytest.mark.integration
def test_routes_from_redis_without_touching_sql(live_redis: tuple[redis.Redis, str], tmp_path: Path) -> None:
    client, prefix = live_redis
    experiment = {
        "experiment_id": "exp-r",
        "salt": "exp-r:1",
        "split": 0.3,
        "coverage": 0.6,
        "control_model": "prod-r",
        "treatment_model": "cand-r",
    }
    assert publish(client, experiment, production_model="prod-r", key_prefix=prefix, ttl_seconds=60)
    assert 0 < client.ttl(redis_key(prefix)) <= 60
    # SQL is unreachable: every answer must come from Redis.
    broken = sa.create_engine(f"sqlite:///{tmp_path / 'missing' / 'nope.db'}")
    router = Router(broken, default_model=DEFAULT, client=client, key_prefix=prefix)
    active = ActiveExperiment.from_mapping(experiment)
    assert [router.route(u) for u in USERS] == [_expected(u, active, "prod-r") for u in USERS]
    assert router.snapshot().source == "redis"


@pytest.mark.integration
def test_redis_miss_reads_sql_and_writes_back(live_redis: tuple[redis.Redis, str], store: PlatformStore) -> None:
    client, prefix = live_redis
    experiment = _start(store)
    router = Router(store.engine, default_model=DEFAULT, client=client, key_prefix=prefix, ttl_seconds=120)
    assert router.route("11") == _expected("11", experiment, DEFAULT)
    assert router.snapshot().source == "sql"
    cached = client.get(redis_key(prefix))
    assert cached is not None
    assert json.loads(cached)["experiment"]["experiment_id"] == "exp-1"
    assert 0 < client.ttl(redis_key(prefix)) <= 120
    # The next replica reads it from Redis.
    second = Router(store.engine, default_model=DEFAULT, client=client, key_prefix=prefix)
    assert second.route("11") == router.route("11")
    assert second.snapshot().source == "redis"
    # An explicit publish wins over write-backs (which are SET NX).
    assert not publish(client, None, production_model="x", key_prefix=prefix, only_if_absent=True)
    assert publish(client, None, production_model="prod-v2", key_prefix=prefix)
    assert Router(store.engine, default_model=DEFAULT, client=client, key_prefix=prefix).route("11") == Route(
        None, "prod-v2", None
    )


@pytest.mark.integration
def test_in_process_cache_refreshes_after_refresh_seconds(
    live_redis: tuple[redis.Redis, str], store: PlatformStore
) -> None:
    client, prefix = live_redis
    clock = FakeClock()
    router = Router(store.engine, default_model=DEFAULT, client=client, key_prefix=prefix, clock=clock)
    assert router.route("1") == Route(None, DEFAULT, None)
    experiment = _start(store)
    publish(client, experiment, production_model="prod-v1", key_prefix=prefix)
    clock.now += 29
    assert router.route("1") == Route(None, DEFAULT, None)  # cached for refresh_seconds = 30
    clock.now += 2
    assert router.route("1") == _expected("1", experiment, "prod-v1")
    assert router.snapshot().source == "redis"


@pytest.mark.integration
def test_garbage_in_redis_falls_back_to_sql(live_redis: tuple[redis.Redis, str], store: PlatformStore) -> None:
    client, prefix = live_redis
    client.set(redis_key(prefix), b"\x00not json", ex=60)
    experiment = _start(store)
    router = Router(store.engine, default_model=DEFAULT, client=client, key_prefix=prefix)
    assert [router.route(u) for u in USERS[:200]] == [_expected(u, experiment, DEFAULT) for u in USERS[:200]]
    assert router.snapshot().source == "sql"
    assert client.get(redis_key(prefix)) == b"\x00not json"  # not overwritten by a write-back


@pytest.mark.integration
def test_redis_client_helper_talks_to_the_real_redis(live_redis: tuple[redis.Redis, str]) -> None:
    _, prefix = live_redis
    client = redis_client("redis://127.0.0.1:6379/0")
    assert publish(client, None, production_model="prod", key_prefix=prefix)
    router = Router("sqlite://", "redis://127.0.0.1:6379/0", default_model=DEFAULT, key_prefix=prefix)
    assert router.route("1") == Route(None, "prod", None)
    assert router.snapshot().source == "redis"
    assert experiments.name == "ft_experiments"  # the store's table, read only
