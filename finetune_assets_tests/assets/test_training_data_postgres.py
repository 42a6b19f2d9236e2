"""`training_data` on Postgres when the database drops its connection half way through the collection.

Marked `integration`: it fails, never skips, when Postgres is unreachable (`make test` starts it).
"""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa

from finetune_assets.assets import training_data
from finetune_assets.finetuning.dataset import Limits, select_examples
from finetune_assets.resources.store import StoreResource
from finetune_assets.settings import Settings
from finetune_assets.store.platform import PlatformStore
from finetune_assets.store.schema import datasets, ledger
from finetune_assets_tests.conftest import resources_for, seed

pytestmark = pytest.mark.integration
CYCLE = "2026-11-15"


def expected_selection(store: PlatformStore, settings: Settings) -> tuple[set[int], set[int], set[int]]:
    """What a clean collection takes: the same selection code over a plain read of the untouched pool."""
    limits = Limits(settings.max_prompt_chars, settings.max_completion_chars, settings.max_tokens_per_example)
    with store.engine.connect() as conn:
        selection = select_examples(
            store.iter_candidate_posts(conn, settings.min_impressions, settings.engagement_threshold),
            limits,
            holdout_fraction=settings.evaluation.holdout_fraction,
            max_examples=settings.max_examples_per_cycle,
        )
    return (
        {p.example.post_id for p in selection.train},
        {p.example.post_id for p in selection.holdout},
        {post_id for post_id, _ in selection.rejected},
    )


def test_killed_connections_during_collection_are_retried_with_the_same_rows_and_no_partial_output(
    pg_store: PlatformStore,
    postgres_url: str,
    config_path: Path,
    state_dir: Path,
    settings: Settings,
    instance: dg.DagsterInstance,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seed(pg_store, n_posts=900)
    train, holdout, rejected = expected_selection(pg_store, settings)
    assert len(train) > 100 and holdout and rejected

    # The first collection loses its backend after 30 streamed rows: pg_terminate_backend from a second
    # connection, as an operator (or a failover) would. Small chunks, so the stream is still open.
    original = PlatformStore.iter_candidate_posts
    killer = sa.create_engine(pg_store.engine.url, isolation_level="AUTOCOMMIT")
    kills: list[int] = []

    def killed_midway(self: PlatformStore, conn: sa.Connection, *args: Any, **kwargs: Any) -> Iterator[dict]:
        for n, row in enumerate(original(self, conn, *args, **{**kwargs, "chunk_size": 20}), start=1):
            if n == 30 and not kills:
                pid = conn.connection.dbapi_connection.get_backend_pid()  # type: ignore[union-attr]
                with killer.connect() as other:
                    assert other.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar()
                kills.append(pid)
            yield row

    monkeypatch.setattr(PlatformStore, "iter_candidate_posts", killed_midway)
    resources = {**resources_for(config_path, state_dir), "store": StoreResource(database_url=postgres_url)}
    try:
        result = dg.materialize([training_data], partition_key=CYCLE, resources=resources, instance=instance)
    finally:
        killer.dispose()

    assert result.success and len(kills) == 1
    warnings = [
        e.message for e in instance.all_logs(result.run_id) if e.level == 30 and "database connection lost" in e.message
    ]
    assert len(warnings) == 1 and "rolled back, retrying" in warnings[0] and "attempt 2 of 3" in warnings[0]

    # The same rows as a clean collection; one dataset, each post once in the ledger: no partial output.
    with pg_store.engine.connect() as conn:
        rows = conn.execute(sa.select(datasets.c.dataset_id, datasets.c.status)).all()
        roles: dict[str, set[int]] = {"train": set(), "holdout": set(), "rejected": set()}
        n_ledger = 0
        for post_id, role in conn.execute(sa.select(ledger.c.post_id, ledger.c.role)):
            roles[role].add(post_id)
            n_ledger += 1
    [(dataset_id, status)] = rows
    assert status == "validated"
    assert (roles["train"], roles["holdout"], roles["rejected"]) == (train, holdout, rejected)
    assert n_ledger == len(train) + len(holdout) + len(rejected)
    metadata = result.asset_materializations_for_node("training_data")[0].metadata
    assert metadata["dataset_id"].value == dataset_id and metadata["n_train"].value == len(train)
