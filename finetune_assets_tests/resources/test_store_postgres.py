"""The same store code path on a real Postgres (one throw-away database per test).

Marked `integration`: it fails, never skips, when Postgres is unreachable (`make test` starts it).
"""

import os
import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest
import sqlalchemy as sa

from finetune_assets.finetuning.dataset import Limits, select_examples
from finetune_assets.resources.store import PlatformStore
from finetune_assets_tests.conftest import NOW, seed, start_experiment

pytestmark = pytest.mark.integration
ADMIN_URL = os.environ.get("FINETUNE_TEST_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")


@pytest.fixture
def pg_store() -> Iterator[PlatformStore]:
    name = f"ft_test_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.make_url(ADMIN_URL).set(database=name)
    store = PlatformStore.from_url(url.render_as_string(hide_password=False))
    store.create_posts_table()
    try:
        yield store
    finally:
        store.engine.dispose()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE "{name}"'))
        admin.dispose()


def test_collection_ledger_and_experiment_on_postgres(pg_store: PlatformStore) -> None:
    seed(pg_store, n_posts=800)
    waiting, newest = pg_store.count_qualifying(100, 0.06)
    assert waiting > 50 and newest is not None
    with pg_store.engine.begin() as conn:
        pg_store.release_partition(conn, "2026-11-15")
        rows = pg_store.iter_candidate_posts(conn, 100, 0.06, chunk_size=25)  # a server-side cursor
        selection = select_examples(rows, Limits(8000, 4000, 1024), holdout_fraction=0.15)
        dataset_id = pg_store.record_dataset(
            conn,
            partition_key="2026-11-15",
            dataset_hash="h",
            train=[(p.example.post_id, p.content_hash) for p in selection.train],
            holdout=[(p.example.post_id, p.content_hash) for p in selection.holdout],
            rejected=[(i, str(r)) for i, r in selection.rejected],
            details={},
        )
    assert pg_store.count_qualifying(100, 0.06) == (0, None)
    assert len(pg_store.load_examples(dataset_id, "train")) == len(selection.train)
    experiment = start_experiment(pg_store)
    assert experiment["ends_at"] == NOW + timedelta(hours=168)
    assert pg_store.running_experiment()["experiment_id"] == experiment["experiment_id"]  # type: ignore[index]
