"""The SQL store: the app's `generated_posts` (read only) and the platform's own tables.

One SQLAlchemy Core code path serves the embedded SQLite file and production Postgres. The store is the
source of truth for everything that must survive a crash: the example ledger (which post trained which
model), datasets and their validation outcome, models, evaluations, experiments and promotions.
Aggregations are pushed into SQL and large reads stream in chunks.

`PlatformStore` is the one entry point: it is every area's queries at once (`posts`, `datasets`, `models`,
`evaluations`, `experiments`, `traffic`, `promotions`, `uploads`, each a `Queries` over the same engine and
posts table), handing out the typed records of `records`, so every caller reads one flat API and each method
is written once, in its area's module.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from finetune_assets.store.datasets import DatasetQueries
from finetune_assets.store.engine import EngineOptions, driver_reason, make_engine
from finetune_assets.store.evaluations import EvaluationQueries
from finetune_assets.store.experiments import ExperimentAlreadyRunning, ExperimentQueries
from finetune_assets.store.migrate import ensure_schema
from finetune_assets.store.models import ModelQueries
from finetune_assets.store.posts import PostQueries
from finetune_assets.store.promotions import PromotionQueries
from finetune_assets.store.records import ArmTotals, PoolCounts
from finetune_assets.store.schema import posts_table
from finetune_assets.store.traffic import TrafficQueries
from finetune_assets.store.uploads import UploadQueries

__all__ = ["ArmTotals", "ExperimentAlreadyRunning", "PlatformStore", "PoolCounts"]

T = TypeVar("T")


class PlatformStore(
    PostQueries,
    DatasetQueries,
    ModelQueries,
    EvaluationQueries,
    ExperimentQueries,
    TrafficQueries,
    PromotionQueries,
    UploadQueries,
):
    """Typed access to the posts table and the platform tables. Creates its tables on first use."""

    def __init__(self, engine: Engine, posts_table_name: str = "generated_posts") -> None:
        super().__init__(engine, posts_table(posts_table_name))
        ensure_schema(engine)

    @classmethod
    def from_url(
        cls, url: str, posts_table_name: str = "generated_posts", options: EngineOptions | None = None
    ) -> PlatformStore:
        return cls(make_engine(url, options), posts_table_name)

    def retrying_transaction(
        self,
        work: Callable[[Connection], T],
        *,
        what: str,
        attempts: int = 3,
        backoff_s: float = 0.5,
        log: Callable[[str], object] | None = None,
    ) -> T:
        """Run `work` in one transaction; if the connection is lost (server restarted, backend terminated, a
        proxy cut it), the transaction is rolled back and `work` runs again on a fresh connection, at most
        `attempts` times in all. `work` must read everything it writes from the database inside the
        transaction, so a retry sees the same rows and commits all or nothing, once. Only lost connections are
        retried: a failing statement, a constraint or a statement timeout is raised at once."""
        for attempt in range(1, attempts + 1):
            try:
                with self.engine.begin() as conn:
                    return work(conn)
            except sa.exc.DBAPIError as exc:
                if not exc.connection_invalidated or attempt >= attempts:
                    raise
                delay = backoff_s * 2 ** (attempt - 1)
                cause = driver_reason(exc)
                if log is not None:
                    log(
                        f"{what}: database connection lost ({cause}); the transaction was rolled back, "
                        f"retrying in {delay:.1f} s (attempt {attempt + 1} of {attempts})"
                    )
                time.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover
