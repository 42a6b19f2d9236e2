"""The service URLs from the environment: one line naming the variable, never its password, never a traceback;
and `finetune-assets demo` uses DATABASE_URL's value."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa

from finetune_assets.cli.demo import DemoError, demo_store, seed_world
from finetune_assets.definitions import build_resources
from finetune_assets.resources.cache import RedisResource
from finetune_assets.resources.store import StoreResource
from finetune_assets.resources.tracking import TrackingResource
from finetune_assets.service_urls import (
    DatabaseUnreachable,
    ServiceUrlError,
    check_service_url,
    connecting,
    mask,
)
from finetune_assets.settings import Settings
from finetune_assets.simulation import GENERATED_POSTS_COLUMNS, DemoWorldConfig
from finetune_assets_tests.fixtures.mlflow_server import free_port

SECRET = "s3cr3t-pw"

BAD = [
    ("DATABASE_URL", f"not a url {SECRET}", "not a SQLAlchemy URL"),
    ("DATABASE_URL", f"mysql://bob:{SECRET}@db/app", "unsupported driver 'mysql'"),
    ("DATABASE_URL", f"postgres://bob:{SECRET}@db/app", "SQLAlchemy spells it postgresql://"),
    ("DATABASE_URL", f"postgresql+psycopg://bob:{SECRET}@db/app", "unsupported driver 'postgresql+psycopg'"),
    ("DATABASE_URL", f"postgresql://bob:{SECRET}:x@db:port/app", "the port is not a number"),
    ("REDIS_URL", f"http://:{SECRET}@cache:6379/0", "unsupported scheme 'http'"),
    ("REDIS_URL", f"cache:{SECRET}@6379", "unsupported scheme 'cache'"),
    ("REDIS_URL", f"redis://:{SECRET}@cache:63x9/0", "bad host or port"),
    ("REDIS_URL", f"redis://:{SECRET}@cache:6379/zero", "database 'zero' is not a number"),
    ("REDIS_URL", "unix://", "no socket path"),
    ("MLFLOW_TRACKING_URI", f"ftp://bob:{SECRET}@mlflow", "unsupported scheme 'ftp'"),
    ("MLFLOW_TRACKING_URI", "localhost:5000", "unsupported scheme 'localhost'"),
    ("MLFLOW_TRACKING_URI", f"https://bob:{SECRET}@/", "no host"),
]


@pytest.mark.parametrize(("variable", "value", "expected"), BAD)
def test_a_bad_service_url_is_one_line_naming_the_variable_without_its_password(
    variable: str, value: str, expected: str
) -> None:
    with pytest.raises(ServiceUrlError) as info:
        check_service_url(variable, value)
    message = str(info.value)
    assert message.startswith(f"{variable}="), message
    assert expected in message and "expected " in message and "\n" not in message
    if SECRET in value and "@" in value:
        assert SECRET not in message


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("DATABASE_URL", "sqlite:///state/finetune.db"),
        ("DATABASE_URL", "postgresql://app@db:5432/app"),
        ("DATABASE_URL", f"postgresql+psycopg2://app:{SECRET}@db/app?options=-c%20search_path%3Dapp"),
        ("REDIS_URL", f"redis://:{SECRET}@cache:6379/0"),
        ("REDIS_URL", "rediss://cache.example:6380"),
        ("REDIS_URL", "unix:///run/redis.sock?db=1"),
        ("MLFLOW_TRACKING_URI", "http://mlflow:5000"),
        ("MLFLOW_TRACKING_URI", "file:///srv/mlruns"),
        ("MLFLOW_TRACKING_URI", "sqlite:///state/mlflow.db"),
        ("MLFLOW_TRACKING_URI", "postgresql+psycopg2://mlflow@db/mlflow"),
        ("MLFLOW_TRACKING_URI", "databricks"),
        ("MLFLOW_TRACKING_URI", "./mlruns"),
    ],
)
def test_good_service_urls_pass_unchanged(variable: str, value: str) -> None:
    assert check_service_url(variable, value) == value


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        (f"postgresql://bob:{SECRET}@db:5432/app", "postgresql://bob:***@db:5432/app"),
        (f"postgresql://bob:p@{SECRET}@db/app", "postgresql://bob:***@db/app"),  # '@' inside the password
        (f"redis://:{SECRET}@cache:6379/0", "redis://:***@cache:6379/0"),
        (f"postgresql://db/app?user=bob&password={SECRET}", "postgresql://db/app?user=bob&password=***"),
        ("sqlite:///state/finetune.db", "sqlite:///state/finetune.db"),
        (f"bob:{SECRET}@db", "bob:***@db"),
    ],
)
def test_mask_hides_the_password_even_in_a_url_that_does_not_parse(url: str, masked: str) -> None:
    assert mask(url) == masked


def test_the_resources_check_their_url_where_they_read_it(tmp_path: Path) -> None:
    with pytest.raises(ServiceUrlError, match=r"^DATABASE_URL=mysql://bob:\*\*\*@db/app: unsupported driver"):
        StoreResource(database_url=f"mysql://bob:{SECRET}@db/app", state_dir=str(tmp_path)).get()
    redis = RedisResource(url=f"http://:{SECRET}@cache:6379/0")
    for use in (redis.client, lambda: redis.evaluation_cache(ttl_seconds=60, warn=print)):
        with pytest.raises(ServiceUrlError, match=r"^REDIS_URL=http://:\*\*\*@cache:6379/0: unsupported scheme"):
            use()
    with pytest.raises(ServiceUrlError, match=r"^MLFLOW_TRACKING_URI=localhost:5000: unsupported scheme"):
        TrackingResource(tracking_uri="localhost:5000", state_dir=str(tmp_path)).uri()


@pytest.mark.parametrize("variable", ["DATABASE_URL", "REDIS_URL", "MLFLOW_TRACKING_URI"])
def test_the_code_location_checks_the_urls_when_it_loads(
    variable: str, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(variable, f"gopher://bob:{SECRET}@somewhere/")
    with pytest.raises(ServiceUrlError) as info:
        build_resources(settings)
    assert str(info.value).startswith(f"{variable}=gopher://bob:***@somewhere/: ")
    assert SECRET not in str(info.value)


def test_a_refused_connection_names_database_url_without_the_password(tmp_path: Path) -> None:
    url = f"postgresql+psycopg2://bob:{SECRET}@127.0.0.1:{free_port()}/app"
    with pytest.raises(DatabaseUnreachable) as info:
        StoreResource(database_url=url, state_dir=str(tmp_path)).get()
    message = str(info.value)
    assert message.startswith("DATABASE_URL=postgresql+psycopg2://bob:***@127.0.0.1:"), message
    assert "cannot connect (" in message and "Connection refused" in message
    assert SECRET not in message and "\n" not in message


def test_a_failing_statement_is_not_called_unreachable(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    engine = sa.create_engine(url)
    with pytest.raises(sa.exc.OperationalError, match="no such table"), connecting(url), engine.connect() as conn:
        conn.execute(sa.text("SELECT * FROM nowhere"))
    engine.dispose()


def _cli(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The installed console script, as a person runs it."""
    script = Path(sys.executable).parent / "finetune-assets"
    environ = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "MLFLOW_TRACKING_URI")}
    environ.update(FINETUNE_STATE_DIR=str(tmp_path / "state"), **env)
    return subprocess.run([str(script), *args], capture_output=True, text=True, env=environ, cwd=tmp_path, timeout=120)


@pytest.mark.parametrize(
    ("database_url", "code", "expected"),
    [
        (f"postgresql+psycopg2://bob:{SECRET}@127.0.0.1:{{closed_port}}/app", 1, "cannot connect"),
        (f"postgresql+psycopg2://bob:{SECRET}@no-such-host.invalid/app", 1, "cannot connect"),
        (f"mysql://bob:{SECRET}@db/app", 2, "unsupported driver 'mysql'"),
    ],
    ids=["refused-port", "unknown-host", "unsupported-driver"],
)
def test_the_cli_with_a_bad_database_url_prints_one_line_and_no_traceback(
    tmp_path: Path, database_url: str, code: int, expected: str
) -> None:
    database_url = database_url.replace("{closed_port}", str(free_port()))  # chosen now: collection is the same
    result = _cli(tmp_path, "posts", "ds-2026-11-15-1a2b3c4d5e", DATABASE_URL=database_url)
    assert result.returncode == code, result.stderr
    assert result.stderr.startswith("finetune-assets: DATABASE_URL=") and result.stderr.count("\n") == 1
    assert expected in result.stderr and "Traceback" not in result.stderr
    assert SECRET not in result.stderr + result.stdout


def test_demo_uses_the_value_of_database_url(
    postgres_url: str, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The definitions hold DATABASE_URL as an EnvVar (its text is the variable's name); the demo's store must be
    the database it names: the demo world lands in Postgres."""
    monkeypatch.setenv("DATABASE_URL", postgres_url)
    resource = build_resources(settings)["store"]
    assert isinstance(resource, StoreResource) and resource.database_url == dg.EnvVar("DATABASE_URL")
    said: list[str] = []
    store = demo_store(resource, said.append)
    world = DemoWorldConfig(seed=1, n_users=20, n_posts=40, history_days=7, bad_row_fraction=0.0)
    written = seed_world(store, world, datetime.now(UTC), reset=True)
    engine = sa.create_engine(postgres_url)
    try:
        with engine.connect() as conn:
            in_postgres = conn.execute(sa.text(f"SELECT count(*) FROM {settings.posts_table}")).scalar_one()
    finally:
        engine.dispose()
    assert written == in_postgres == 40
    assert said == [f"store: DATABASE_URL={mask(postgres_url)} (its {settings.posts_table} table gets the demo world)"]


def test_the_demo_refuses_a_database_holding_posts_it_did_not_write(
    postgres_url: str, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The demo replaces the posts table: pointed at a real product's database, it must stop before deleting."""
    monkeypatch.setenv("DATABASE_URL", postgres_url)
    resource = build_resources(settings)["store"]
    assert isinstance(resource, StoreResource)
    store = demo_store(resource, lambda _line: None)
    world = DemoWorldConfig(seed=1, n_users=20, n_posts=40, history_days=7, bad_row_fraction=0.0)
    seed_world(store, world, datetime.now(UTC), reset=True)
    assert demo_store(resource, lambda _line: None) is store, "a second demo on its own world is fine"
    row = {column: None for column in GENERATED_POSTS_COLUMNS}
    store.insert_posts(
        [
            {
                **row,
                "post_id": 10_000,
                "created_at": datetime.now(UTC),
                "updated_at": datetime.now(UTC),
                "user_id": "u-real",
                "model_id": "gpt-4o-prod",
                "completion": "a real post",
                "impressions": 5,
                "engagements": 1,
            }
        ]
    )
    with pytest.raises(DemoError, match="holds 1 posts that are not the demo's simulated world") as refused:
        demo_store(resource, lambda _line: None)
    assert str(refused.value).startswith("DATABASE_URL=") and "\n" not in str(refused.value)
    with store.engine.connect() as conn:
        assert conn.execute(sa.text(f"SELECT count(*) FROM {settings.posts_table}")).scalar_one() == 41
