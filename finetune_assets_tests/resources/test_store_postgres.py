"""The same store code path on a real Postgres (one throw-away database per test: fixtures/services.py).

Marked `integration`: it fails, never skips, when Postgres is unreachable (`make test` starts it).
"""

from datetime import timedelta

import pytest
import sqlalchemy as sa

from finetune_assets.finetuning.dataset import Limits, select_examples
from finetune_assets.resources.store import StoreResource
from finetune_assets.store.engine import EngineOptions
from finetune_assets.store.platform import PlatformStore
from finetune_assets_tests.conftest import NOW, seed, start_experiment

pytestmark = pytest.mark.integration


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
    assert experiment.ends_at == NOW + timedelta(hours=168)
    running = pg_store.running_experiment()
    assert running is not None and running.experiment_id == experiment.experiment_id


def test_engine_sends_the_statement_timeout_and_keeps_the_urls_own_options(postgres_url: str) -> None:
    url = sa.make_url(postgres_url).update_query_dict({"options": "-c lock_timeout=1500"})
    store = PlatformStore.from_url(
        url.render_as_string(hide_password=False), options=EngineOptions(statement_timeout_s=0.2)
    )
    try:
        with store.engine.connect() as conn:
            assert conn.execute(sa.text("SHOW statement_timeout")).scalar() == "200ms"
            assert conn.execute(sa.text("SHOW lock_timeout")).scalar() == "1500ms"
            assert conn.execute(sa.text("SHOW application_name")).scalar() == "finetune-assets"
        assert (store.engine.pool.size(), store.engine.pool._max_overflow) == (5, 5)  # type: ignore[attr-defined]
        calls = []

        def slow(conn: sa.Connection) -> None:
            calls.append(1)
            conn.execute(sa.text("SELECT pg_sleep(2)"))

        # A statement timeout is not a lost connection: it fails at once, no retry.
        with pytest.raises(sa.exc.OperationalError, match="canceling statement due to statement timeout"):
            store.retrying_transaction(slow, what="slow", log=calls.append)
        assert calls == [1]
    finally:
        store.engine.dispose()


def test_store_resource_passes_its_pool_and_timeout_settings(postgres_url: str) -> None:
    db = StoreResource(database_url=postgres_url, pool_size=2, max_overflow=1, statement_timeout_s=7).get()
    with db.engine.connect() as conn:
        assert conn.execute(sa.text("SHOW statement_timeout")).scalar() == "7s"
    assert (db.engine.pool.size(), db.engine.pool._max_overflow) == (2, 1)  # type: ignore[attr-defined]
    db.engine.dispose()


def test_a_transaction_whose_backend_is_killed_is_rolled_back_and_run_again(pg_store: PlatformStore) -> None:
    seed(pg_store, n_posts=300)
    with pg_store.engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE marks (n int)"))
    logged: list[str] = []
    attempts: list[int] = []
    killer = sa.create_engine(pg_store.engine.url, isolation_level="AUTOCOMMIT")

    def work(conn: sa.Connection) -> int:
        attempts.append(1)
        conn.execute(sa.text("INSERT INTO marks VALUES (1)"))
        if len(attempts) == 1:  # the first attempt loses its backend half way
            pid = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar()
            with killer.connect() as other:  # a second connection, as an operator or a failover would
                other.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        return int(conn.execute(sa.text("SELECT count(*) FROM generated_posts")).scalar_one())

    try:
        assert pg_store.retrying_transaction(work, what="marks", log=logged.append, backoff_s=0.01) == 300
    finally:
        killer.dispose()
    assert len(attempts) == 2
    assert len(logged) == 1 and "database connection lost" in logged[0] and "attempt 2 of 3" in logged[0]
    with pg_store.engine.connect() as conn:  # the first attempt's insert was rolled back: exactly one mark
        assert conn.execute(sa.text("SELECT count(*) FROM marks")).scalar() == 1


def test_trained_hashes_among_finds_only_examples_of_trained_datasets(pg_store: PlatformStore) -> None:
    seed(pg_store, n_posts=50)
    with pg_store.engine.begin() as conn:
        trained = pg_store.record_dataset(
            conn, partition_key="2026-11-08", dataset_hash="a", train=[(1, "h1"), (2, "h2")], holdout=[(3, "h3")],
            rejected=[], details={},
        )  # fmt: skip
        pg_store.record_dataset(
            conn, partition_key="2026-11-15", dataset_hash="b", train=[(4, "h4")], holdout=[], rejected=[], details={}
        )  # validated, not trained yet
    pg_store.set_dataset_status(trained, "trained")
    hashes = ["h1", "h3", "h4", "nope", *(f"x{i}" for i in range(2500))]  # more than one lookup batch
    with pg_store.engine.connect() as conn:
        assert pg_store.trained_hashes_among(conn, hashes) == {"h1"}
        assert pg_store.trained_hashes_among(conn, []) == frozenset()
