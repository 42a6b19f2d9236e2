"""Migrations of the platform tables: a first-release database keeps every row, a fresh one equals
`schema.metadata`, a newer one is refused, the opt-out refuses, concurrent starters serialize, the CLI verbs."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from finetune_assets.cli import main
from finetune_assets.store import migrate
from finetune_assets.store.engine import make_engine
from finetune_assets.store.platform import PlatformStore
from finetune_assets.store.schema import datasets, metadata, posts_table
from finetune_assets_tests.conftest import write_config
from finetune_assets_tests.store import previous_release_schema

T0 = datetime(2026, 11, 15, 12, 0, tzinfo=UTC)
ROWS: dict[str, list[dict[str, Any]]] = {
    "ft_datasets": [
        {
            "dataset_id": f"ds-{i}",
            "partition_key": "2026-11-15",
            "dataset_hash": "h" * 64,
            "status": "trained",
            "n_train": 10 + i,
            "n_holdout": 2,
            "n_rejected": 1,
            "created_at": T0,
            "details": {"i": i, "tags": ["a"]},
        }
        for i in range(3)
    ],
    "ft_example_ledger": [
        {
            "post_id": 10**12 + i,
            "dataset_id": "ds-0",
            "role": "train" if i % 2 else "holdout",
            "reason": None if i % 3 else "short",
            "content_hash": f"{i:064x}",
        }
        for i in range(20)
    ],
    "ft_models": [
        {
            "model_id": "ft:gpt-4o-mini:x",
            "partition_key": "2026-11-15",
            "dataset_id": "ds-0",
            "backend": "openai",
            "base_model": "gpt-4o-mini",
            "job_id": "ftjob-1",
            "status": "succeeded",
            "created_at": T0,
            "details": {},
        }
    ],
    "ft_evaluations": [
        {
            "evaluation_id": "ev-1",
            "partition_key": "2026-11-15",
            "candidate_model": "ft:gpt-4o-mini:x",
            "champion_model": "base",
            "passed": True,
            "created_at": T0,
            "scores": {"win_rate": 0.61},
        }
    ],
    "ft_experiments": [
        {
            "experiment_id": "exp-1",
            "partition_key": "2026-11-15",
            "control_model": "base",
            "treatment_model": "ft:gpt-4o-mini:x",
            "salt": "s",
            "split": 0.5,
            "coverage": 0.05,
            "started_at": T0,
            "ends_at": T0,
            "status": "decided",
            "decision": "promote",
            "reason": "lift",
            "decided_at": T0,
            "details": {"lift": 0.031},
        }
    ],
    "ft_promotions": [
        {
            "promotion_id": 1,
            "experiment_id": "exp-1",
            "model_id": "ft:gpt-4o-mini:x",
            "previous_model_id": "base",
            "registry_version": "3",
            "promoted": True,
            "created_at": T0,
        }
    ],
    "ft_uploaded_files": [
        {
            "endpoint": "https://api.openai.com/v1",
            "sha256": "a" * 64,
            "file_id": "file-1",
            "purpose": "fine-tune",
            "n_bytes": 2**40,
            "filename": "train.jsonl",
            "created_at": T0,
        }
    ],
}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.integration)])
def engine(request: pytest.FixtureRequest, tmp_path: Path):
    url = (
        f"sqlite:///{tmp_path / 'finetune.db'}"
        if request.param == "sqlite"
        else request.getfixturevalue("postgres_url")
    )
    engine = make_engine(url)
    yield engine
    engine.dispose()


def _dump(engine: sa.Engine, tables: sa.MetaData) -> dict[str, list[tuple[Any, ...]]]:
    with engine.connect() as conn:
        return {
            t.name: [tuple(r) for r in conn.execute(sa.select(t).order_by(*t.primary_key.columns))]
            for t in tables.sorted_tables
        }


def _differences(engine: sa.Engine) -> list[Any]:
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"include_name": migrate.include_name, "compare_type": True})
        return list(compare_metadata(context, metadata))


def _structure(engine: sa.Engine) -> dict[str, Any]:
    """What reflection shows of the ft_ tables, index options (partial, covering) included."""
    inspector = sa.inspect(engine)
    tables = sorted(t for t in inspector.get_table_names() if migrate.include_name(t, "table", None))
    return {
        t: (
            [(c["name"], str(c["type"]), c["nullable"]) for c in inspector.get_columns(t)],
            inspector.get_pk_constraint(t),
            sorted(inspector.get_foreign_keys(t), key=repr),
            sorted(inspector.get_indexes(t), key=lambda i: str(i["name"])),
            sorted(inspector.get_unique_constraints(t), key=repr),
        )
        for t in tables
    }


def _versions(engine: sa.Engine) -> list[str]:
    with engine.connect() as conn:
        return [r[0] for r in conn.execute(sa.text(f"SELECT version_num FROM {migrate.VERSION_TABLE}"))]


def _previous_release(engine: sa.Engine) -> sa.Table:
    """A database as the release before migrations left it, with rows in every platform table and the app's."""
    previous_release_schema.metadata.create_all(engine)
    posts = posts_table()
    posts.create(engine)
    with engine.begin() as conn:
        for table in previous_release_schema.metadata.sorted_tables:
            conn.execute(table.insert(), ROWS[table.name])
        conn.execute(
            posts.insert(),
            [
                {
                    "post_id": i,
                    "created_at": T0,
                    "user_id": "u",
                    "model_id": "base",
                    "impressions": 10,
                    "engagements": 1,
                    "updated_at": T0,
                }
                for i in range(5)
            ],
        )
    return posts


def test_previous_release_database_keeps_every_row_and_ends_at_head(engine: sa.Engine) -> None:
    posts = _previous_release(engine)
    before = _dump(engine, previous_release_schema.metadata)
    with engine.connect() as conn:
        posts_before = conn.execute(sa.select(posts).order_by(posts.c.post_id)).all()
    assert all(len(before[name]) == len(rows) for name, rows in ROWS.items())
    status = migrate.schema_status(engine)
    assert status.unversioned and not status.current
    store = PlatformStore(engine)  # starts as a deployment does: verify, stamp, upgrade
    assert _dump(engine, previous_release_schema.metadata) == before
    with engine.connect() as conn:
        assert conn.execute(sa.select(posts).order_by(posts.c.post_id)).all() == posts_before
    assert _versions(engine) == [migrate.schema_status(engine).head]
    assert store.get_dataset("ds-1") is not None  # the store reads the old row
    with engine.connect() as conn:
        details = conn.execute(sa.select(datasets.c.details).where(datasets.c.dataset_id == "ds-1")).scalar()
    assert details == {"i": 1, "tags": ["a"]}
    assert _differences(engine) == []


def test_fresh_database_upgraded_to_head_equals_the_schema(engine: sa.Engine, tmp_path: Path) -> None:
    change = migrate.upgrade(engine)
    assert change.before.current == () and change.after.at_head
    assert _differences(engine) == []
    assert "generated_posts" not in sa.inspect(engine).get_table_names()  # never the app's table
    # The revision's explicit DDL reflects exactly as `create_all` of schema.py does, index options included.
    reference = make_engine(f"sqlite:///{tmp_path / 'reference.db'}") if engine.dialect.name == "sqlite" else None
    if reference is None:
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE SCHEMA reference")
        reference = sa.create_engine(engine.url, execution_options={"schema_translate_map": {None: "reference"}})
        with reference.begin() as conn:
            conn.exec_driver_sql("SET search_path TO reference")
            metadata.create_all(conn)
        structure = _structure(engine)
        inspector = sa.inspect(reference)
        got = {
            t: [(c["name"], str(c["type"]), c["nullable"]) for c in inspector.get_columns(t, schema="reference")]
            for t in structure
        }
        assert got == {t: s[0] for t, s in structure.items()}
        indexes = {
            t: sorted(inspector.get_indexes(t, schema="reference"), key=lambda i: str(i["name"])) for t in structure
        }
        assert indexes == {t: s[3] for t, s in structure.items()}
        reference.dispose()
        return
    metadata.create_all(reference)
    assert _structure(engine) == _structure(reference)
    reference.dispose()


def test_upgrade_is_idempotent(engine: sa.Engine) -> None:
    first = migrate.upgrade(engine)
    second = migrate.upgrade(engine)
    assert second.before == second.after == first.after
    migrate.ensure_schema(engine)
    PlatformStore(engine)
    PlatformStore(engine)
    assert _versions(engine) == [first.after.head]
    assert _differences(engine) == []


def test_a_newer_revision_is_refused_naming_both(engine: sa.Engine) -> None:
    migrate.upgrade(engine)
    with engine.begin() as conn:
        conn.execute(sa.text(f"UPDATE {migrate.VERSION_TABLE} SET version_num = '0099_from_the_future'"))
    with pytest.raises(migrate.SchemaTooNewError) as refused:
        PlatformStore(engine)
    message = str(refused.value)
    assert "0099_from_the_future" in message and migrate.INITIAL_REVISION in message and "\n" not in message
    assert _versions(engine) == ["0099_from_the_future"]


def test_unversioned_tables_that_differ_are_refused_untouched(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'finetune.db'}")
    previous_release_schema.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP INDEX ix_ft_models_partition_key")
    with pytest.raises(migrate.SchemaMismatchError, match="missing index ix_ft_models_partition_key"):
        migrate.ensure_schema(engine)
    assert migrate.VERSION_TABLE not in sa.inspect(engine).get_table_names()


def test_opt_out_refuses_an_out_of_date_schema(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(migrate.AUTO_UPGRADE_ENV, "0")
    engine = make_engine(f"sqlite:///{tmp_path / 'finetune.db'}")
    previous_release_schema.metadata.create_all(engine)
    with pytest.raises(migrate.SchemaOutOfDateError, match=r"run `finetune-assets db upgrade`"):
        PlatformStore(engine)
    assert migrate.VERSION_TABLE not in sa.inspect(engine).get_table_names()
    migrate.upgrade(engine)  # the deliberate step
    PlatformStore(engine)  # at head: starts


STARTER = """
import sys
from finetune_assets.store.engine import make_engine
from finetune_assets.store.migrate import ensure_schema
sys.stdin.readline()  # all start together
ensure_schema(make_engine(sys.argv[1]))
"""


def test_concurrent_starters_serialize(engine: sa.Engine) -> None:
    """Four processes start on one fresh database at once: each waits for the lock, one creates the tables."""
    url = engine.url.render_as_string(hide_password=False)
    starters = [
        subprocess.Popen([sys.executable, "-c", STARTER, url], stdin=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    time.sleep(1.5)  # let every process import before any starts
    for process in starters:
        assert process.stdin is not None
        process.stdin.write("go\n")
        process.stdin.flush()
    results = [(process.wait(timeout=120), process.stderr.read() if process.stderr else "") for process in starters]
    assert results == [(0, "")] * 4
    assert _versions(engine) == [migrate.INITIAL_REVISION] and _differences(engine) == []


def test_head_is_the_initial_revision_and_it_records_as_the_schema() -> None:
    """Today head is the initial revision, and reading its op calls back gives schema.metadata's tables."""
    recorded = migrate.initial_metadata(migrate._script(), sa.create_engine("sqlite://").dialect)
    assert migrate._head(migrate._script()) == migrate.INITIAL_REVISION
    assert set(recorded.tables) == set(metadata.tables)
    for name, table in metadata.tables.items():
        assert [c.name for c in recorded.tables[name].columns] == [c.name for c in table.columns]
        assert {i.name for i in recorded.tables[name].indexes} == {i.name for i in table.indexes}


def test_cli_db_current_and_upgrade(
    tmp_path: Path, state_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    config = str(write_config(tmp_path / "c.yaml", state_dir))
    assert main(["--config", config, "db", "current"]) == 0
    assert capsys.readouterr().out.strip() == (
        f"none (no platform tables yet) (head is {migrate.INITIAL_REVISION}: run `finetune-assets db upgrade`)"
    )
    assert main(["--config", config, "db", "upgrade"]) == 0
    assert capsys.readouterr().out.strip() == (
        f"upgraded from none (no platform tables yet) to {migrate.INITIAL_REVISION} (head)"
    )
    assert (state_dir / "finetune.db").exists()
    assert main(["--config", config, "db", "upgrade"]) == 0
    assert capsys.readouterr().out.strip() == f"already at head {migrate.INITIAL_REVISION}"
    assert main(["--config", config, "db", "current"]) == 0
    assert capsys.readouterr().out.strip() == f"{migrate.INITIAL_REVISION} (head)"

    other = tmp_path / "other.db"  # DATABASE_URL wins over the state dir
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{other}")
    previous_release_schema.metadata.create_all(make_engine(f"sqlite:///{other}"))
    assert main(["--config", config, "db", "current"]) == 0
    assert "none (platform tables from a release before migrations)" in capsys.readouterr().out
    with make_engine(f"sqlite:///{other}").begin() as conn:
        conn.execute(sa.text(f"CREATE TABLE {migrate.VERSION_TABLE} (version_num VARCHAR(32) NOT NULL)"))
        conn.execute(sa.text(f"INSERT INTO {migrate.VERSION_TABLE} VALUES ('0099_from_the_future')"))
    for verb in ("current", "upgrade"):
        assert main(["--config", config, "db", verb]) == 1
        err = capsys.readouterr().err
        assert err.startswith("finetune-assets: ") and err.count("\n") == 1 and "0099_from_the_future" in err
